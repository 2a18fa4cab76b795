"""Does SRPO's progress reward order the *policy's* failures as Meta-World's dense reward does?

    python docs/results/srpo_failure_order/run.py --batches 4 \
        --output docs/results/srpo_failure_order/result.json

The bundled base's own training rollouts, exactly as `vla-rl finetune --method srpo --tasks MT10`
draws and scores them at its first RL step (the SRPO preset's defaults: 80 rollouts, a group of
8 from one train initial state per task, temperature 1, 16 frames of 128 px, demonstration
references `auto`), repeated for `--batches` batches with the training seed schedule and no
update in between. Each batch is scored on its own, as in training. Per (batch, task): the
Spearman correlation, over that task's failures, of the progress reward with Meta-World's shaped
reward at the last decision step ("how far it got") and with its episode maximum; tasks scored
against in-batch successes ("batch") apart from those scored against demonstrations ("demos").
And what the reward does to GRPO's advantages in the groups it trains on (success rate in
(0, 1)): the successes' mean advantage with the progress reward and with the sparse success
reward, and the share of failures pushed up (advantage > 0). Meta-World's dense reward is read
here for the diagnosis only; training never sees it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vla_rl.core.benchmark import EnvConfig, get_benchmark
from vla_rl.core.policy import load_policy
from vla_rl.core.reward import RewardContext
from vla_rl.core.trajectories import Trajectories
from vla_rl.io.atomic import atomic_write_json
from vla_rl.io.provenance import provenance
from vla_rl.methods.srpo import SRPO, SRPOConfig
from vla_rl.rewards.rank_correlation import spearman
from vla_rl.rewards.srpo_progress import last_step_env_reward
from vla_rl.rl.advantages import group_advantages, groups_with_contrast
from vla_rl.rollout.engine import RolloutEngine


def episode_max_env_reward(traj: Trajectories) -> np.ndarray:
    """Each episode's largest per-env-step reward over its decision steps (B,)."""
    per_step = traj.rewards.numpy() / np.maximum(traj.chunk_steps.numpy(), 1)
    return np.where(traj.valid.numpy(), per_step, -np.inf).max(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", default="metaworld-flow")
    parser.add_argument("--tasks", default="MT10")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="srpo_failure_order.json")
    args = parser.parse_args()

    bench = get_benchmark("metaworld")
    names = bench.resolve_task_names([args.tasks])
    tasks = bench.tasks("train", names)
    policy = load_policy(args.policy, bench)
    pg = SRPOConfig()
    pg.episodes_per_step = pg.group_size * len(names)  # what --tasks MT10 resolves to
    method = SRPO(pg, policy, bench, names)
    env_cfg = EnvConfig(num_envs=pg.rollout_envs, num_workers=pg.rollout_workers,
                        video_size=method.rollout_frame_size)  # fmt: skip
    method.reward.prepare(RewardContext(bench, tasks, env_cfg))
    venv = policy.wrap_env(bench.make_env(tasks, env_cfg))
    engine = RolloutEngine(venv, env_cfg.pipeline_groups)
    rng = np.random.default_rng(args.seed)
    policy.temperature = pg.temperature

    per_task: dict[str, dict[str, list]] = {
        t: {"kind": [], "rho_last": [], "rho_max": [], "failures": 0} for t in names
    }
    adv_success_srpo, adv_success_sparse, failure_adv = [], [], []
    start = time.perf_counter()
    for step in range(args.batches):
        episodes = method.episodes(tasks, rng)
        records = engine.run(policy, episodes, keep_steps=True,
                             seed=args.seed * 1_000_003 + step,
                             record_video=lambda i, s: True,
                             frames_per=method.rollout_frames_per)  # fmt: skip
        traj = Trajectories.from_episodes(records)
        scores = method.reward(traj).sum(0)  # (B,) as GRPO sums them
        rewards, success = scores.numpy(), traj.success.numpy()
        last, peak = last_step_env_reward(traj), episode_max_env_reward(traj)
        task_of = np.asarray(traj.tasks)
        for t in names:
            losses = (task_of == t) & ~success
            per_task[t]["failures"] += int(losses.sum())
            if losses.sum() < 3 or np.ptp(rewards[losses]) == 0:
                continue
            per_task[t]["kind"].append("batch" if (success & (task_of == t)).any() else "demos")
            per_task[t]["rho_last"].append(spearman(rewards[losses], last[losses]))
            per_task[t]["rho_max"].append(spearman(rewards[losses], peak[losses]))
        keep = groups_with_contrast(traj.success, traj.group, pg.filter_low, pg.filter_high)
        adv = group_advantages(scores, traj.group)
        sparse = group_advantages(traj.success.float(), traj.group)
        won = traj.success & keep
        adv_success_srpo += adv[won].tolist()
        adv_success_sparse += sparse[won].tolist()
        failure_adv += adv[keep & ~traj.success].tolist()
        print(f"batch {step}: {len(records)} rollouts, {time.perf_counter() - start:.0f} s",
              flush=True)  # fmt: skip
    venv.close()

    def mean(values) -> float | None:
        return round(float(np.mean(values)), 3) if len(values) else None

    table = {}
    for t, v in per_task.items():
        kinds = np.asarray(v["kind"])
        table[t] = {"failures": v["failures"], "scored_batches": len(kinds)}
        for kind in ("batch", "demos"):
            pick = kinds == kind
            table[t][kind] = {
                "batches": int(pick.sum()),
                "spearman_last": mean(np.asarray(v["rho_last"])[pick]),
                "spearman_max": mean(np.asarray(v["rho_max"])[pick]),
            }
    pooled = {
        kind: {
            "task_batches": sum(table[t][kind]["batches"] for t in names),
            "spearman_last": mean([r for t in names for k, r in
                                   zip(per_task[t]["kind"], per_task[t]["rho_last"]) if k == kind]),
            "spearman_max": mean([r for t in names for k, r in
                                  zip(per_task[t]["kind"], per_task[t]["rho_max"]) if k == kind]),
        }
        for kind in ("batch", "demos")
    }  # fmt: skip
    out = {
        "policy": args.policy, "tasks": names, "batches": args.batches, "seed": args.seed,
        "rollouts_per_batch": pg.episodes_per_step, "group_size": pg.group_size,
        "per_task": table, "pooled": pooled,
        "mixed_groups": {
            "successes": len(adv_success_srpo),
            "success_advantage_srpo": mean(adv_success_srpo),
            "success_advantage_sparse": mean(adv_success_sparse),
            "failures": len(failure_adv),
            "failures_pushed_up": mean(np.asarray(failure_adv) > 0),
        },
        "wall_s": round(time.perf_counter() - start, 1),
        "provenance": provenance(),
    }  # fmt: skip
    atomic_write_json(args.output, out)
    print(out["pooled"], out["mixed_groups"])


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
