"""Measurements of a world model on held-out real episodes (world-models.md section 4):
open-loop prediction per horizon against the copy-last-frame baseline (MSE, PSNR, error on
moving pixels only), the action-shuffle gap, and the reflector's ROC-AUC on real and on
generated frames with the hallucinated-success rate. The training loop's validation and
`vla-rl world-model eval` both call these.

Open loop: from a real context at frame t, the model is given the episode's real actions and
its own frames as context from then on; step j's prediction is compared with the real frame
t + j k. Copy-last predicts frame t for every j. Shapes: E rollouts, h horizon (model steps),
S image size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from vla_rl.world_models.data import FrameBank
from vla_rl.world_models.video_model import StepInputs, VideoWorldModel

MOVING = 10 / 255  # a pixel "moves" when some channel of the real frame changed by this much


@torch.no_grad()
def open_loop(
    model: VideoWorldModel,
    bank: FrameBank,
    episodes: Sequence[int],
    starts: Sequence[int],
    horizon: int,
    action_episodes: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Imagine `horizon` model steps of k env steps from frame starts[i] of episodes[i], with
    the actions of action_episodes[i] (default: the same episode) from the same frame.

    Returns frames uint8 (E, h, S, S, 3), real (E, h, S, S, 3) (the last real frame past an
    episode's end), last (E, S, S, 3) the context's newest real frame, valid (E, h) bool (the
    real frame exists and so do the actions), reached (E, h) bool (the step starts before the
    episode's last frame: a last partial step reaches it, its missing actions repeated),
    state / real_state (E, h, Ds), success_p and progress (E, h) the reflector on the generated
    frames, tasks (E,)."""
    cfg = model.cfg
    dev = next(model.parameters()).device
    k, n_ctx = cfg.frame_skip, cfg.context_frames
    ep = np.asarray(episodes)
    src = ep if action_episodes is None else np.asarray(action_episodes)
    t = np.asarray(starts)
    base, length = bank.start[ep], bank.length[ep]
    ctx_idx = np.maximum(t[:, None] + np.arange(-(n_ctx - 1), 1)[None] * k, 0)
    context = bank.frames[torch.from_numpy(base[:, None] + ctx_idx)].to(dev)
    gaps = torch.from_numpy(np.diff(ctx_idx, axis=1).astype(np.float32)).to(dev)
    tasks = torch.from_numpy(bank.task[ep]).to(dev)
    state = bank.state[torch.from_numpy(base + t)].to(dev)
    prev = bank.state[torch.from_numpy(base + ctx_idx[:, -2] if n_ctx > 1 else base + t)].to(dev)
    gens = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(len(ep))]
    out: dict[str, list] = {
        k_: []
        for k_ in (
            "frames",
            "real",
            "state",
            "real_state",
            "success_p",
            "progress",
            "valid",
            "reached",
        )
    }
    mask = torch.ones(len(ep), k, device=dev)
    for j in range(horizon):
        cur = t + j * k
        rows = np.minimum(cur[:, None] + np.arange(k)[None], bank.length[src, None] - 1)
        actions = bank.action[torch.from_numpy(bank.start[src, None] + rows)].to(dev)
        x = StepInputs(context, actions, mask, gaps, tasks, state, prev)
        frame = model.sample(x, gens)
        new_state = model.predict_state(x)
        target = np.minimum(cur + k, length - 1)
        valid = (cur + k <= length - 1) & (cur + k <= bank.length[src])
        out["frames"].append(frame.cpu())
        out["real"].append(bank.frames[torch.from_numpy(base + target)])
        out["state"].append(new_state.cpu())
        out["real_state"].append(bank.state[torch.from_numpy(base + target)])
        logits = model.reflector(frame, tasks)
        out["success_p"].append(torch.sigmoid(logits[:, 0]).cpu())
        out["progress"].append(torch.sigmoid(logits[:, 1]).cpu())
        out["valid"].append(torch.from_numpy(valid))
        out["reached"].append(torch.from_numpy(cur < length - 1))
        context = torch.cat([context[:, 1:], frame[:, None]], 1)
        gaps = torch.cat([gaps[:, 1:], torch.full_like(gaps[:, :1], k)], 1)
        prev, state = state, new_state
    res = {name: torch.stack(v, 1) for name, v in out.items()}
    res["last"] = bank.frames[torch.from_numpy(base + t)]
    res["tasks"] = torch.from_numpy(bank.task[ep])
    return res


def prediction_errors(rollout: dict[str, torch.Tensor]) -> dict[str, list[float | None]]:
    """Per horizon step (h,): MSE and PSNR (pixels in [0, 1]) of the model and of copy-last,
    and both MSEs on moving pixels only (where the real frame changed since the context),
    means over the valid rollouts (None where a step has none)."""
    gen = rollout["frames"].float() / 255
    real = rollout["real"].float() / 255
    last = rollout["last"].float()[:, None].expand_as(real) / 255
    valid = rollout["valid"]
    moving = ((real - last).abs().amax(-1, keepdim=True) > MOVING).float()  # (E, h, S, S, 1)
    out: dict[str, list[float | None]] = {
        k: []
        for k in (
            "mse",
            "copy_last_mse",
            "psnr",
            "copy_last_psnr",
            "moving_mse",
            "copy_last_moving_mse",
            "state_mse",
        )
    }
    state_err = ((rollout["state"] - rollout["real_state"]) ** 2).mean(-1)  # (E, h)
    for j in range(gen.shape[1]):
        v = valid[:, j]
        if not v.any():
            for values in out.values():
                values.append(None)
            continue
        for name, pred in (("", gen), ("copy_last_", last)):
            err = ((pred[v, j] - real[v, j]) ** 2).mean((1, 2, 3))  # (E',)
            out[f"{name}mse"].append(float(err.mean()))
            out[f"{name}psnr"].append(float((10 * torch.log10(1 / err.clamp_min(1e-10))).mean()))
            m = moving[v, j]
            moved = ((pred[v, j] - real[v, j]) ** 2 * m).sum() / (3 * m.sum()).clamp_min(1)
            out[f"{name}moving_mse"].append(float(moved))
        out["state_mse"].append(float(state_err[v, j].mean()))
    return out


def evenly_spaced_starts(
    bank: FrameBank, episodes: Sequence[int], per_episode: int, horizon: int
) -> tuple[list[int], list[int]]:
    """(episodes, start frames): `per_episode` starts spread over each episode's frames from
    which `horizon` model steps stay inside it (frame 0 only when none does)."""
    k = bank.cfg.frame_skip
    eps, starts = [], []
    for e in episodes:
        room = int(bank.length[e]) - 1 - horizon * k
        ts = np.unique(np.linspace(0, max(room, 0), per_episode).round().astype(int))
        eps += [int(e)] * len(ts)
        starts += ts.tolist()
    return eps, starts


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(n) with no fixed point (n >= 2): each rollout gets another
    episode's actions."""
    while True:
        perm = rng.permutation(n)
        if n < 2 or not (perm == np.arange(n)).any():
            return perm


def prediction_report(
    model: VideoWorldModel,
    bank: FrameBank,
    episodes: Sequence[int],
    horizon: int,
    per_episode: int = 2,
    seed: int = 0,
) -> dict:
    """Open-loop errors per horizon with the true actions and with actions shuffled across
    episodes; the shuffle gap is (moving-pixel MSE shuffled - true), > 0 when the model uses
    the actions. Returns the rollout with true actions too (for videos)."""
    eps, starts = evenly_spaced_starts(bank, episodes, per_episode, horizon)
    true = open_loop(model, bank, eps, starts, horizon, seed=seed)
    errors = prediction_errors(true)
    report: dict = {
        "rollouts": len(eps),
        "horizon_env_steps": [bank.cfg.frame_skip * (j + 1) for j in range(horizon)],
    }
    report.update(errors)
    if len(set(eps)) >= 2:
        # Shuffle across episodes (not across starts of one episode): pair each rollout with
        # a rollout of another episode, so the actions come from a different trajectory.
        rng = np.random.default_rng(seed)
        order = derangement(len(eps), rng)
        for _ in range(10):
            if all(eps[i] != eps[order[i]] for i in range(len(eps))):
                break
            order = derangement(len(eps), rng)
        shuffled = open_loop(
            model, bank, eps, starts, horizon, action_episodes=[eps[i] for i in order], seed=seed
        )
        shuffled["valid"] &= true["valid"]
        s_err = prediction_errors(shuffled)
        report["shuffled_moving_mse"] = s_err["moving_mse"]
        report["shuffled_mse"] = s_err["mse"]
        report["action_shuffle_gap"] = [
            None if a is None or b is None else b - a
            for a, b in zip(errors["moving_mse"], s_err["moving_mse"])
        ]
    return {"report": report, "rollout": true}


@torch.no_grad()
def reflector_report(
    model: VideoWorldModel,
    bank: FrameBank,
    episodes: Sequence[int],
    threshold: float,
    consecutive: int,
    roc_auc: Callable,
    seed: int = 0,
    max_steps: int | None = None,
) -> dict:
    """The reflector on held-out episodes: ROC-AUC of its success probability (within each
    task, then the mean over tasks) on real frames and on frames the model generated open-loop
    from each episode's first frame with its real actions (labelled as the real frame they
    stand for), and the success rule (p >= threshold for `consecutive` model steps) on those
    imagined episodes: the fraction of failed episodes it calls successful (hallucinated
    success) and of successful ones it detects. roc_auc(scores, labels) -> float: the commands
    pass vla_rl.rewards.critic_quality.roc_auc (an adapter imports nothing above vla_rl.data)."""

    dev = next(model.parameters()).device
    rows = torch.from_numpy(
        np.concatenate([bank.start[e] + np.arange(bank.length[e]) for e in episodes])
    )
    labels = bank.success_label[rows]
    tasks_real = bank.frame_task[rows]
    p_real = torch.cat(
        [
            torch.sigmoid(
                model.reflector(bank.frames[c].to(dev), bank.frame_task[c].to(dev))[:, 0]
            ).cpu()
            for c in rows.split(256)
        ]
    )
    k = bank.cfg.frame_skip
    horizon = -(-int(max(bank.length[e] for e in episodes) - 1) // k)  # ceil: reach the end
    if max_steps is not None:
        horizon = min(horizon, max(max_steps // k, 1))
    roll = open_loop(model, bank, list(episodes), [0] * len(episodes), max(horizon, 1), seed=seed)
    gen_labels = []
    for e in episodes:
        idx = np.minimum((np.arange(roll["valid"].shape[1]) + 1) * k, bank.length[e] - 1)
        gen_labels.append(bank.success_label[torch.from_numpy(bank.start[e] + idx)])
    gen_labels = torch.stack(gen_labels)  # (E, h)
    p_gen = roll["success_p"]
    valid = roll["reached"]
    tasks_gen = roll["tasks"][:, None].expand(valid.shape)

    def auc(scores: torch.Tensor, y: torch.Tensor) -> float | None:
        keep = y >= 0
        y, scores = y[keep], scores[keep]
        if len(y) == 0 or y.min() == y.max():
            return None
        return round(roc_auc(scores.numpy(), y.numpy().astype(int)), 4)

    def per_task_auc(scores, y, tasks) -> dict[str, float | None]:
        # Within each task: pooled over tasks, a reflector that only knew each task's share of
        # success frames (a short task has more) would score well without reading the frame.
        return {bank.cfg.tasks[t]: auc(scores[tasks == t], y[tasks == t])
                for t in sorted(set(tasks.tolist()))}  # fmt: skip

    real_tasks = per_task_auc(p_real, labels, tasks_real)
    gen_tasks = per_task_auc(p_gen[valid], gen_labels[valid], tasks_gen[valid])

    # the success rule along each imagined episode (its real length; a model step past the
    # real end stops the replay, since there are no real actions left)
    fired = []
    for i in range(len(episodes)):
        run = 0
        hit = False
        for j in range(p_gen.shape[1]):
            if not valid[i, j]:
                break
            run = run + 1 if p_gen[i, j] >= threshold else 0
            hit = hit or run >= consecutive
        fired.append(hit)
    success = np.array([bool(bank.episodes[e].success) for e in episodes])
    fired = np.array(fired)
    return {
        "auc_real": mean_known(real_tasks.values()),
        "auc_generated": mean_known(gen_tasks.values()),
        "auc_real_per_task": real_tasks,
        "auc_generated_per_task": gen_tasks,
        "real_frames": int((labels >= 0).sum()),
        "generated_frames": int((gen_labels[valid] >= 0).sum()),
        "hallucinated_success_rate": float(fired[~success].mean()) if (~success).any() else None,
        "detected_success_rate": float(fired[success].mean()) if success.any() else None,
        "failed_episodes": int((~success).sum()),
        "successful_episodes": int(success.sum()),
        "threshold": threshold,
        "consecutive": consecutive,
    }


def mean_known(values) -> float | None:
    """The mean of the values that are not None (a task without both classes has no AUC)."""
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 4) if kept else None


def comparison_video(
    rollout: dict[str, torch.Tensor], rows: Sequence[int], scale: int = 2
) -> list[np.ndarray]:
    """Frames (H, W, 3) uint8 of a side-by-side video: real | imagined for each of `rows`
    (stacked vertically), starting with the shared real context frame; upscaled `scale`x
    (nearest) so 64 px frames are watchable."""
    frames = []
    steps = rollout["frames"].shape[1]
    for j in range(-1, steps):
        tiles = []
        for r in rows:
            real = rollout["last"][r] if j < 0 else rollout["real"][r, j]
            gen = rollout["last"][r] if j < 0 else rollout["frames"][r, j]
            tiles.append(torch.cat([real, gen], 1))
        frame = torch.cat(tiles, 0)
        frames.append(frame.repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy())
    return frames
