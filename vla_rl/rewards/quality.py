"""How well SRPO's progress reward tracks true progress, per trajectory encoder (SRPO paper's
reward-quality benchmark, methods.md section 1.8, rebuilt on Meta-World's scripted experts).

    python -m vla_rl.rewards.quality --tasks button-press-topdown-v3 door-open-v3 \
        --output docs/results/srpo_reward_quality.json

Per task: the scripted expert's successful episodes from `references` train initial states are
the batch's successes. Held-out rollouts with known progress: expert episodes from other train
initial states cut after a fraction p in {0.2, 0.4, 0.6, 0.8} of their steps (true progress p),
and episodes of the all-zero policy (true progress 0), all scored as failures. Each is scored
against the references exactly as during training (`progress_rewards`: successes get 1 by
construction, so only the failures' order depends on the encoder), and the Spearman correlation
between reward and p is reported. The held-out episodes' uncut versions are left out of the
batch: they would be references for their own cuts.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from vla_rl.core.benchmark import EnvConfig, EpisodeSpec, get_benchmark
from vla_rl.core.policy import load_policy
from vla_rl.core.trajectories import Trajectories
from vla_rl.io.atomic import atomic_write_json
from vla_rl.io.provenance import provenance
from vla_rl.rewards.encoders import EfficientNetEncoder, PolicyFeatureEncoder
from vla_rl.rewards.rank_correlation import spearman
from vla_rl.rewards.srpo_progress import ProgressRewardConfig, progress_rewards
from vla_rl.rollout.engine import RolloutEngine

CUTS = (0.2, 0.4, 0.6, 0.8)


class PixelEncoder:
    """Baseline: raw frames shrunk to 16 x 16, averaged over uniformly sampled frames (the
    SRPO paper's "pixel" baseline)."""

    needs_frames = True

    def __init__(self, frames: int = 16):
        self.frames = frames

    def __call__(self, traj, videos):
        from vla_rl.rewards.encoders import frames_to_pixels, uniform_indices

        out = []
        for v in videos:
            clip = v[uniform_indices(len(v), self.frames)]
            px = frames_to_pixels(clip, 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
            out.append(px.flatten(1).mean(0))
        return torch.stack(out).numpy()


def cut(traj: Trajectories, videos: list[np.ndarray], fraction: float):
    """The first `fraction` of every episode's decision steps (and of its frames)."""
    short = copy.deepcopy(traj)
    keep = [max(1, int(round(fraction * int(n)))) for n in traj.lengths]
    for b, n in enumerate(keep):
        short.valid[n:, b] = False
    return short, [v[: n + 1] for v, n in zip(videos, keep)]


def concat(trajs: list[Trajectories]) -> Trajectories:
    """Episodes of several Trajectories side by side (padded to the longest)."""
    t_max = max(t.num_steps for t in trajs)

    def pad(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == t_max:
            return x
        return torch.cat([x, x[-1:].expand(t_max - x.shape[0], *x.shape[1:])])

    out = copy.deepcopy(trajs[0])
    out.obs = {k: (sum((t.obs[k] for t in trajs), []) if isinstance(v, list)
                   else torch.cat([pad(t.obs[k]) for t in trajs], 1))
               for k, v in trajs[0].obs.items()}  # fmt: skip
    pads = [torch.zeros(t_max - t.num_steps, t.batch_size, dtype=torch.bool) for t in trajs]
    out.valid = torch.cat([torch.cat([t.valid, p]) for t, p in zip(trajs, pads)], 1)
    out.tasks = sum((t.tasks for t in trajs), [])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["button-press-topdown-v3", "door-open-v3"])
    parser.add_argument("--references", type=int, default=8)
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--frame-size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--policy", default="metaworld-flow")
    parser.add_argument("--output", default="srpo_reward_quality.json")
    args = parser.parse_args()
    torch.set_num_threads(2)

    bench = get_benchmark("metaworld")
    tasks = bench.tasks("train", args.tasks)
    env_cfg = EnvConfig(num_envs=4, num_workers=2, video_size=args.frame_size)
    venv = bench.make_env(tasks, env_cfg)
    engine = RolloutEngine(venv, 2)

    def rollouts(policy, specs, successes_only=False):
        records = engine.run(policy, specs, keep_steps=True, record_video=lambda i, s: True,
                             frames_per="chunk", deterministic=True)  # fmt: skip
        if successes_only:  # the scripted experts fail from a few initial states
            records = [r for r in records if r.success]
        return Trajectories.from_episodes(records), [np.stack(r.frames) for r in records]

    expert, zero = load_policy("scripted", bench), load_policy("zero", bench)
    # Per task: references and held-out expert episodes from disjoint initial states.
    ref_specs = [EpisodeSpec(t, i) for t in tasks for i in t.init_ids[: args.references]]
    held = slice(args.references, args.references + args.held_out)
    held_specs = [EpisodeSpec(t, i) for t in tasks for i in t.init_ids[held]]
    zero_specs = [EpisodeSpec(t, i) for t in tasks for i in t.init_ids[held][:4]]
    ref_traj, ref_videos = rollouts(expert, ref_specs, successes_only=True)
    held_traj, held_videos = rollouts(expert, held_specs, successes_only=True)
    zero_traj, zero_videos = rollouts(zero, zero_specs)
    venv.close()
    expert_counts = {t.name: sum(x == t.name for x in ref_traj.tasks + held_traj.tasks)
                     for t in tasks}  # fmt: skip

    # The batch: references (successes), then cuts (progress p) and zero-policy episodes (0).
    parts = [cut(held_traj, held_videos, p) for p in CUTS]
    trajs = [ref_traj] + [p[0] for p in parts] + [zero_traj]
    videos = ref_videos + sum((p[1] for p in parts), []) + zero_videos
    n_ref, n_held, n_zero = ref_traj.batch_size, held_traj.batch_size, zero_traj.batch_size
    progress = np.concatenate([np.repeat(CUTS, n_held), np.zeros(n_zero)])
    success = np.concatenate([np.ones(n_ref, bool), np.zeros(len(progress), bool)])
    batch = concat(trajs)

    policy = load_policy(args.policy, bench)
    encoders = {
        "efficientnet (mean over frames)": EfficientNetEncoder(
            args.frames, args.frame_size, "mean"
        ),
        "efficientnet (concat frames)": EfficientNetEncoder(args.frames, args.frame_size, "concat"),
        f"policy features ({args.policy}, mean)": PolicyFeatureEncoder(policy, args.frames, "mean"),
        f"policy features ({args.policy}, concat)": PolicyFeatureEncoder(
            policy, args.frames, "concat"
        ),  # fmt: skip
        "pixels 16x16 (baseline)": PixelEncoder(args.frames),
    }
    results = {}
    for name, encoder in encoders.items():
        start = time.perf_counter()
        emb = encoder(batch, videos)
        wall = time.perf_counter() - start
        rewards, _ = progress_rewards(emb, success, batch.tasks, ProgressRewardConfig())
        held_rewards = rewards[n_ref:]
        per_task = {t: round(spearman(held_rewards[np.asarray(batch.tasks[n_ref:]) == t],
                                      progress[np.asarray(batch.tasks[n_ref:]) == t]), 4)
                    for t in args.tasks}  # fmt: skip
        results[name] = {
            "spearman": round(spearman(held_rewards, progress), 4),
            "spearman_per_task": per_task,
            "mean_reward_by_progress": {
                str(p): round(float(held_rewards[progress == p].mean()), 4)
                for p in sorted(set(progress.tolist()))
            },  # fmt: skip
            "embed_s_per_rollout": round(wall / len(videos), 4),
        }
        print(name, results[name], flush=True)
    out = {
        "tasks": args.tasks, "references_per_task": args.references,
        "held_out_per_task": args.held_out, "successful_expert_episodes": expert_counts,
        "cuts": CUTS, "frames": args.frames,
        "frame_size": args.frame_size, "encoders": results,
        "not_measured": {"vjepa2": "no V-JEPA 2 weights can be obtained on this machine (no hub "
                         "access, no PyPI wheel); the encoder is tested on a tiny random config"},
        "provenance": provenance(),
    }  # fmt: skip
    atomic_write_json(args.output, out)


if __name__ == "__main__":
    main()
