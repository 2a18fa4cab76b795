"""`vla-rl fit-critic`: train a small pairwise progress critic (`PairwiseProgressCritic`,
../shared/reference/critics.md 4.3) on LeRobot datasets of demonstrations and policy rollouts.

Reads top to bottom: load every dataset's frames of one camera -> split episodes into train and
held-out by (instruction, initial state) -> resize the train frames into one bank -> loop:
sample VLAC's pair groups and done frames, HL-Gauss cross-entropy + done BCE, atomic checkpoints
-> the critic (model.safetensors + config.json), fit.json with the losses and the held-out
quality (`critic_quality`).

Labels (VLAC, paper sec 3.1.1; critics.md 1.6 and 4.3), from the frame index and the episode's
success flag only; the simulator's dense reward and success predicates are never read here
(they are for evaluating the critic, so its numbers stay honest):
* pairs come from successful episodes, whose progress is taken as t / (T - 1). Each sampled
  (i, dt) gives VLAC's group (i, i+1), (i+1, i), (i, i+dt), (i+dt, i): the backward pairs are
  the regress examples (a ReWiND "rewind" segment, forward then reversed, asks exactly these
  pairs of a pairwise critic), labelled -(i - j) / i; plus the static pair (i, i), label 0.
  A pair whose frames differ by less than 1% of the pixel range is labelled 0 (VLAC's rule 1).
* `wrong_instruction` of the pairs get another instruction (another training one, or one it
  never saw) and label 0.
* done: successful episodes' frames after 0.95 T are 1, before 0.8 T are 0, between unlabelled;
  every frame of a failed episode is 0 (a failed rollout is never done); a done frame with a
  wrong instruction is 0.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vla_rl.core.config import ConfigError, parse_cli, to_dict
from vla_rl.io.atomic import atomic_write_json
from vla_rl.io.provenance import provenance
from vla_rl.rewards.pairwise_critic import (
    PairwiseProgressCritic,
    hl_gauss_target,
    resize_frames,
    vlac_pair_label,
)

STATIC_PIXEL_DIFF = 0.01  # VLAC's rule 1: frames this close (fraction of 255) are a 0 pair
DONE_BELOW, DONE_ABOVE = 0.8, 0.95  # VLAC's done labels: 0 before 0.8 T, 1 after 0.95 T
PAIRS_PER_GROUP = 5  # VLAC's four + the static pair
LOG_EVERY = 10  # steps between loss records in fit.json


@dataclass
class FitCriticConfig:
    """`vla-rl fit-critic`: train a small pairwise progress critic on LeRobot datasets."""

    datasets: tuple[str, ...] = ()
    """LeRobot v3.0 directories with camera streams (`vla-rl collect --env.images`):
    demonstrations and policy rollouts; each episode's success flag is its outcome."""
    camera: str = ""
    """Camera whose frames the critic reads. Empty: each dataset's first camera."""
    image_size: int = 64
    """S: frames are resized to S x S. 64 keeps a gripper and an object apart at 128 px renders
    at a few ms per frame on a CPU."""
    steps: int = 1000
    """Gradient steps. 1000 x 16 groups: about two CPU minutes on two cores (an estimate from
    the model's ~12 M multiply-adds per frame), enough for a few tasks of scripted demos."""
    batch_size: int = 16
    """Pair groups per step; a group is 5 pairs (VLAC's four and a static one) and 2 done
    frames (one labelled done, one not, as VLAC samples them)."""
    lr: float = 1e-3
    """Adam learning rate, constant (so a resumed run continues exactly); 1e-3 suits a small
    CNN trained from scratch."""
    held_out: float = 0.2
    """Fraction of each instruction's initial states whose episodes are held out (at least
    one when there are two or more); the quality in fit.json is measured on them."""
    wrong_instruction: float = 0.05
    """Fraction of pairs and done frames asked under a wrong instruction, labelled 0 (VLAC's
    5%)."""
    bins: int = 51
    """Delta histogram bins on [-1, 1] (HL-Gauss, sigma 0.75 bin widths)."""
    save_every: int = 250
    """Steps between checkpoints (written atomically; --resume continues from the last)."""
    output_dir: str = "runs/fit_critic"
    """Run directory: critic/ (model.safetensors, config.json), checkpoint/, fit.json."""
    resume: bool = False
    """Continue from output_dir/checkpoint (a larger --steps trains on)."""
    overwrite: bool = False
    """Replace what an existing output_dir holds."""
    seed: int = 0
    """Seeds the split, the pair sampling and the weights."""
    progress: bool = True
    """Show a progress bar."""


# Settings a resumed run must share with the checkpoint (steps may grow; the rest is how to run).
RUN_ONLY = ("steps", "save_every", "output_dir", "resume", "overwrite", "progress")


@dataclass
class CriticData:
    """One episode's frames, as the fit reads them.

    frames: uint8 (T, H, W, 3) of the chosen camera; instruction: its task; success: the
    dataset's per-episode outcome; source: "dataset#index"; start: the initial-state key.
    """

    frames: np.ndarray
    instruction: str
    success: bool
    source: str
    start: bytes


def check_config(cfg: FitCriticConfig) -> None:
    """One-line ConfigErrors for bad values, before any dataset is read."""
    if not cfg.datasets:
        raise ConfigError("--datasets is required (LeRobot v3.0 directories with camera images)")
    for name in ("steps", "batch_size", "save_every"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.image_size < 8:
        raise ConfigError(f"--image-size must be >= 8, got {cfg.image_size}")
    if cfg.bins < 2:
        raise ConfigError(f"--bins must be >= 2, got {cfg.bins}")
    if cfg.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {cfg.lr}")
    if not 0 < cfg.held_out < 1:
        raise ConfigError(f"--held-out must be in (0, 1), got {cfg.held_out}")
    if not 0 <= cfg.wrong_instruction < 1:
        raise ConfigError(f"--wrong-instruction must be in [0, 1), got {cfg.wrong_instruction}")


def load_data(cfg: FitCriticConfig) -> tuple[list[CriticData], dict[str, str]]:
    """Every episode of every dataset (frames of one camera) and the camera read per dataset."""
    from vla_rl.data.lerobot_dataset import LeRobotDataset

    episodes, cameras = [], {}
    for path in cfg.datasets:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"--datasets {path}: no such dataset directory")
        ds = LeRobotDataset(path)
        names = [key.removeprefix("observation.images.") for key in ds.cameras]
        if not names:
            raise ValueError(
                f"--datasets {path} holds no camera images; the critic learns from frames "
                "(collect with --env.images)"
            )
        camera = cfg.camera or names[0]
        if camera not in names:
            raise ConfigError(
                f"--camera {camera!r} is not in {path}; valid choices: {', '.join(names)}"
            )
        cameras[path] = camera
        for i in range(len(ds)):
            ep = ds.episode(i)
            if ep.length < 2:
                continue  # no pair, and VOC needs two frames
            episodes.append(CriticData(ep.images[camera], ep.task, ep.success, f"{path}#{i}",
                                       initial_state_key(ep)))  # fmt: skip
    if not episodes:
        raise ValueError(f"{', '.join(cfg.datasets)}: no episode of 2 or more frames")
    return episodes, cameras


def initial_state_key(episode) -> bytes:
    """What identifies an episode's initial state: its first state, plus LIBERO's recorded
    MuJoCo state where there is one (LIBERO's proprio alone is the same home pose for every
    initial state), rounded so that a demo and a rollout from the same reset agree."""
    parts = [np.asarray(episode.state[0], np.float64).ravel()]
    if "observation.sim_state" in episode.extras:
        parts.append(np.asarray(episode.extras["observation.sim_state"][0], np.float64).ravel())
    return np.round(np.concatenate(parts), 3).tobytes()


def split_episodes(episodes: list[CriticData], held_out: float, seed: int):
    """(train, held) episode indices: per instruction, its distinct initial states are shuffled
    (seeded) and `held_out` of them, at least one when there are two, go to held-out with every
    episode that starts there; so no episode, nor any reset it shares, is on both sides."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for instruction in sorted({e.instruction for e in episodes}):
        groups: dict[bytes, list[int]] = {}
        for k, e in enumerate(episodes):
            if e.instruction == instruction:
                groups.setdefault(e.start, []).append(k)
        keys = sorted(groups)
        n_held = min(max(round(held_out * len(keys)), 1), len(keys) - 1)
        order = rng.permutation(len(keys))
        for rank, g in enumerate(order):
            (held if rank < n_held else train).extend(groups[keys[g]])
    return sorted(train), sorted(held)


class FrameBank:
    """Episodes' frames resized to S x S, concatenated: frames uint8 (N, S, S, 3), and per
    episode its first row, length, success and instruction id."""

    def __init__(self, episodes: list[CriticData], critic: PairwiseProgressCritic):
        size = critic.image_size
        self.frames = torch.cat([resize_frames(torch.from_numpy(e.frames), size)
                                 for e in episodes])  # fmt: skip
        lengths = np.array([len(e.frames) for e in episodes])
        self.start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.length = lengths
        self.success = np.array([e.success for e in episodes])
        self.ids = critic.instruction_ids([e.instruction for e in episodes]).cpu().numpy()
        self.num_instructions = len(critic.instructions)


def wrong_ids(rng: np.random.Generator, ids: np.ndarray, num_instructions: int) -> np.ndarray:
    """For each id (n,), a different one: another training instruction or UNKNOWN, uniformly."""
    # Draw from the num_instructions ids other than one's own (ids 0..num_instructions).
    draw = rng.integers(0, num_instructions, size=len(ids))
    return np.where(draw >= ids, draw + 1, draw)


def sample_batch(bank: FrameBank, rng: np.random.Generator, groups: int, wrong: float) -> dict:
    """One step's labelled queries (row indices into bank.frames), see the module docstring:
    pairs a, b, label, ids (groups * 5,) and done rows, labels, ids (groups * 2,)."""
    successful = np.flatnonzero(bank.success)
    failed = np.flatnonzero(~bank.success)
    ep = rng.choice(successful, size=groups)
    last = bank.length[ep] - 1
    i = rng.integers(0, last)  # 0 .. last - 1
    dt = rng.integers(1, last - i + 1)  # 1 .. last - i
    first = np.stack([i, i + 1, i, i + dt, i], 1)
    second = np.stack([i + 1, i, i + dt, i, i], 1)
    label = vlac_pair_label(first, second, (last + 1)[:, None]).astype(np.float32)
    a = (bank.start[ep][:, None] + first).ravel()
    b = (bank.start[ep][:, None] + second).ravel()
    label = label.ravel()
    pixel_diff = (bank.frames[a].float() - bank.frames[b].float()).abs().mean((1, 2, 3)) / 255
    label[pixel_diff.numpy() < STATIC_PIXEL_DIFF] = 0.0
    ids = np.repeat(bank.ids[ep], PAIRS_PER_GROUP)
    swap = rng.random(len(ids)) < wrong
    ids[swap] = wrong_ids(rng, ids[swap], bank.num_instructions)
    label[swap] = 0.0

    # Done frames: one done (after 0.95 T of a success) and one not (before 0.8 T of a success,
    # or any frame of a failure, half the time when there are failures) per group.
    pos_ep = rng.choice(successful, size=groups)
    pos_last = bank.length[pos_ep] - 1
    lo = np.floor(DONE_ABOVE * pos_last).astype(int) + 1  # first t > 0.95 T (<= last)
    pos_t = rng.integers(np.minimum(lo, pos_last), pos_last + 1)
    neg_from_failure = (rng.random(groups) < 0.5) & (len(failed) > 0)
    neg_ep = np.where(neg_from_failure, rng.choice(failed if len(failed) else successful,
                                                   size=groups),
                      rng.choice(successful, size=groups))  # fmt: skip
    neg_len = bank.length[neg_ep]
    hi = np.where(neg_from_failure, neg_len, np.maximum(np.ceil(DONE_BELOW * (neg_len - 1)), 1))
    neg_t = rng.integers(0, hi.astype(int))
    done_rows = np.concatenate([bank.start[pos_ep] + pos_t, bank.start[neg_ep] + neg_t])
    done_label = np.concatenate([np.ones(groups), np.zeros(groups)]).astype(np.float32)
    done_ids = np.concatenate([bank.ids[pos_ep], bank.ids[neg_ep]])
    swap = rng.random(len(done_ids)) < wrong
    done_ids[swap] = wrong_ids(rng, done_ids[swap], bank.num_instructions)
    done_label[swap] = 0.0
    return {"a": a, "b": b, "label": label, "ids": ids,
            "done_rows": done_rows, "done_label": done_label, "done_ids": done_ids}  # fmt: skip


def batch_losses(critic: PairwiseProgressCritic, bank: FrameBank, batch: dict) -> dict:
    """HL-Gauss cross-entropy of the deltas, BCE of done (scalars), and the deltas' mean
    absolute error (a readable number, not trained on). Each frame is encoded once."""
    net, device = critic.net, critic.device
    rows = np.concatenate([batch["a"], batch["b"], batch["done_rows"]])
    unique, inverse = np.unique(rows, return_inverse=True)
    features = net.encode(bank.frames[torch.from_numpy(unique)].to(device))
    inverse = torch.from_numpy(inverse).to(device)
    n = len(batch["a"])
    f_a, f_b, f_done = features[inverse].split([n, n, len(rows) - 2 * n])

    def tensor(x, dtype):
        return torch.as_tensor(x, dtype=dtype, device=device)

    logits = net.delta_logits(f_a, f_b, tensor(batch["ids"], torch.long))
    label = tensor(batch["label"], torch.float32)
    target = hl_gauss_target(label.cpu(), critic.bins, critic.sigma).to(device)
    delta_ce = -(target * logits.log_softmax(1)).sum(1).mean()
    done_logit = net.done_logit(f_done, tensor(batch["done_ids"], torch.long))
    done_bce = F.binary_cross_entropy_with_logits(
        done_logit, tensor(batch["done_label"], torch.float32)
    )
    mae = (net.expected_delta(logits) - label).abs().mean()
    return {"delta_ce": delta_ce, "done_bce": done_bce, "delta_mae": mae}


def other_instructions(instructions: list[str]) -> dict[str, str]:
    """For the wrong-instruction probe: each instruction -> the next one (sorted, cyclic), or
    one never trained on when there is a single instruction."""
    names = sorted(set(instructions))
    if len(names) == 1:
        return {names[0]: "an instruction this critic was never trained on"}
    return {s: names[(k + 1) % len(names)] for k, s in enumerate(names)}


def checkpoint(run: Path, critic: PairwiseProgressCritic, optimizer, state: dict) -> None:
    """The weights, optimizer and torch RNG (tensors) and state.json (step, losses, numpy RNG),
    published in one atomic rename (`vla_rl.runs.checkpoint`)."""
    from vla_rl.runs.checkpoint import save_checkpoint

    tree = {"net": critic.net.state_dict(), "optimizer": optimizer.state_dict(),
            "torch_rng": torch.random.get_rng_state()}  # fmt: skip
    save_checkpoint(run / "checkpoint", tree, state)


def identity(cfg: FitCriticConfig) -> dict[str, Any]:
    """The settings that shape the training (a resume must match them), as state.json stores
    them (through JSON, so tuples compare as the lists they come back as)."""
    return json.loads(json.dumps({k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY}))


def count(episodes: list[CriticData]) -> dict[str, int]:
    ok = sum(e.success for e in episodes)
    return {"successful": ok, "failed": len(episodes) - ok}


def fit_critic(cfg: FitCriticConfig) -> dict:
    from tqdm.auto import tqdm

    from vla_rl.rewards.critic_quality import CriticEpisode, critic_quality
    from vla_rl.runs.checkpoint import find_checkpoint, load_checkpoint
    from vla_rl.runs.run import check_run_directory, claim_run_directory

    check_config(cfg)
    run = Path(cfg.output_dir)
    check_run_directory(run, cfg.resume, cfg.overwrite)
    episodes, cameras = load_data(cfg)
    train_idx, held_idx = split_episodes(episodes, cfg.held_out, cfg.seed)
    train = [episodes[k] for k in train_idx]
    held = [episodes[k] for k in held_idx]
    for name, part in (("train", train), ("held-out", held)):
        if not any(e.success for e in part):
            raise ValueError(
                f"the {name} split has no successful episode ({len(part)} episodes); the critic "
                "learns progress from successes and is scored on them: add demonstrations or "
                "initial states, or change --held-out"
            )

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    critic = PairwiseProgressCritic(sorted({e.instruction for e in train}),
                                    image_size=cfg.image_size, bins=cfg.bins)  # fmt: skip
    optimizer = torch.optim.Adam(critic.net.parameters(), lr=cfg.lr)
    state: dict[str, Any] = {"step": 0, "wall_s": 0.0, "losses": [], "identity": identity(cfg)}
    resume_from = find_checkpoint(run / "checkpoint") if cfg.resume else None
    if resume_from is not None:
        tree, saved = load_checkpoint(resume_from)
        if saved.get("identity") != state["identity"]:
            differ = sorted(k for k, v in state["identity"].items()
                            if saved.get("identity", {}).get(k) != v)  # fmt: skip
            raise ConfigError(
                f"--resume: the checkpoint in {run} trained with other settings "
                f"({', '.join(differ)}); resume with the run's own settings, or start a new run"
            )
        state = saved
        critic.net.load_state_dict(tree["net"])
        optimizer.load_state_dict(tree["optimizer"])
        torch.random.set_rng_state(tree["torch_rng"])
        rng.bit_generator.state = state.pop("numpy_rng")
    bank = FrameBank(train, critic)

    claim_run_directory(run, cfg.overwrite)  # every check has passed: from here on it writes
    bar = tqdm(total=cfg.steps, initial=state["step"], desc="fit-critic", unit="step",
               disable=not cfg.progress)  # fmt: skip
    critic.net.train()
    try:
        while state["step"] < cfg.steps:
            start = time.perf_counter()
            losses = batch_losses(critic, bank, sample_batch(bank, rng, cfg.batch_size,
                                                             cfg.wrong_instruction))  # fmt: skip
            loss = losses["delta_ce"] + losses["done_bce"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            state["step"] += 1
            state["wall_s"] += time.perf_counter() - start
            step = state["step"]
            bar.update(1)
            if step % LOG_EVERY == 0 or step == 1:
                point = {k: round(v.item(), 5) for k, v in losses.items()}
                state["losses"].append({"step": step, **point})
                bar.set_postfix(ce=f"{point['delta_ce']:.3f}", mae=f"{point['delta_mae']:.3f}")
            if step % cfg.save_every == 0 or step == cfg.steps:
                checkpoint(run, critic, optimizer, dict(state, numpy_rng=rng.bit_generator.state))
    finally:
        bar.close()

    critic.net.eval()
    critic.clear_cache()  # answers cached before training belong to the old weights
    critic.save(run / "critic")
    held_losses = held_out_losses(critic, held, cfg.batch_size, cfg.wrong_instruction, cfg.seed)
    quality = critic_quality(
        critic,
        [CriticEpisode(e.frames, e.instruction, e.success) for e in held],
        other_instructions([e.instruction for e in episodes]),
        mode="anchored",
        seed=cfg.seed,
    )
    results = {
        "critic_dir": str(run / "critic"),
        "datasets": list(cfg.datasets),
        "cameras": cameras,
        "parameters": critic.num_parameters(),
        "episodes": {"train": count(train), "held_out": count(held)},
        "held_out_episodes": [e.source for e in held],
        "steps": state["step"],
        "train_wall_s": round(state["wall_s"], 1),
        "losses": state["losses"],
        "held_out_losses": held_losses,
        "quality": quality,
        "config": to_dict(cfg),
        "provenance": provenance(),
    }
    atomic_write_json(run / "fit.json", results)
    return results


@torch.no_grad()
def held_out_losses(critic, held: list[CriticData], groups: int, wrong: float, seed: int) -> dict:
    """The training losses on 8 seeded batches of held-out queries (means)."""
    # An instruction held out entirely is UNKNOWN to the critic, which is trained to answer 0
    # there: scoring its episodes against progress labels would mislead.
    held = [e for e in held if critic.knows(e.instruction)]
    if not held:
        return {}
    bank = FrameBank(held, critic)
    if not bank.success.any():
        return {}
    rng = np.random.default_rng(seed + 1)
    sums: dict[str, float] = {}
    for _ in range(8):
        for k, v in batch_losses(critic, bank, sample_batch(bank, rng, groups, wrong)).items():
            sums[k] = sums.get(k, 0.0) + v.item() / 8
    return {k: round(v, 5) for k, v in sums.items()}


def main(args: list[str]) -> int:
    cfg = parse_cli(
        FitCriticConfig, args, prog="vla-rl fit-critic", description=FitCriticConfig.__doc__
    )
    res = fit_critic(cfg)
    q = res["quality"]
    auc = q["auc_final_progress"]["value"]
    auc_text = "n/a (no held-out failure)" if auc is None else f"{auc:.2f}"
    print(
        f"\ncritic of {res['parameters'] / 1e6:.2f} M parameters, {res['steps']} steps in "
        f"{res['train_wall_s']:.0f} s; held-out ({res['episodes']['held_out']['successful']} "
        f"successful, {res['episodes']['held_out']['failed']} failed): VOC "
        f"{q['voc']['mean']:.2f}, success AUC of final progress {auc_text}; "
        f"critic: {res['critic_dir']} (details: {Path(cfg.output_dir) / 'fit.json'})"
    )
    return 0
