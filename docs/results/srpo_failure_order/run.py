"""Does SRPO's progress reward order the *policy's* failures as Meta-World's dense reward does?

    python docs/results/srpo_failure_order/run.py --batches 8 --encoders efficientnet policy \
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
import dataclasses
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
from vla_rl.rewards.srpo_progress import SRPOProgressReward, last_step_env_reward
from vla_rl.rl.advantages import group_advantages, groups_with_contrast
from vla_rl.rollout.engine import RolloutEngine


def episode_max_env_reward(traj: Trajectories) -> np.ndarray:
    """Each episode's largest per-env-step reward over its decision steps (B,)."""
    per_step = traj.rewards.numpy() / np.maximum(traj.chunk_steps.numpy(), 1)
    return np.where(traj.valid.numpy(), per_step, -np.inf).max(0)


def score_batch(
    found: dict, rewards: np.ndarray, traj: Trajectories, names: list[str], pg: SRPOConfig
) -> None:
    """Add one batch's per-task correlations and mixed-group advantages to `found`."""
    success = traj.success.numpy()
    last, peak = last_step_env_reward(traj), episode_max_env_reward(traj)
    task_of = np.asarray(traj.tasks)
    for t in names:
        losses = (task_of == t) & ~success
        found["per_task"][t]["failures"] += int(losses.sum())
        if losses.sum() < 3 or np.ptp(rewards[losses]) == 0:
            continue
        row = found["per_task"][t]
        row["kind"].append("batch" if (success & (task_of == t)).any() else "demos")
        row["rho_last"].append(spearman(rewards[losses], last[losses]))
        row["rho_max"].append(spearman(rewards[losses], peak[losses]))
    keep = groups_with_contrast(traj.success, traj.group, pg.filter_low, pg.filter_high)
    adv = group_advantages(torch.as_tensor(rewards, dtype=torch.float32), traj.group)
    sparse = group_advantages(traj.success.float(), traj.group)
    won = traj.success & keep
    found["adv_success"] += adv[won].tolist()
    found["adv_success_sparse"] += sparse[won].tolist()
    found["adv_failure"] += adv[keep & ~traj.success].tolist()


def mean(values) -> float | None:
    return round(float(np.mean(values)), 3) if len(values) else None


def summarize(found: dict, names: list[str]) -> dict:
    """Per task and pooled over tasks, per kind of reference; the mixed groups' advantages."""
    per_task, table = found["per_task"], {}
    for t, v in per_task.items():
        kinds = np.asarray(v["kind"])
        table[t] = {"failures": v["failures"], "scored_batches": len(kinds)}
        for kind in ("batch", "demos"):
            pick = kinds == kind
            table[t][kind] = {"batches": int(pick.sum()),
                              "spearman_last": mean(np.asarray(v["rho_last"])[pick]),
                              "spearman_max": mean(np.asarray(v["rho_max"])[pick])}  # fmt: skip

    def pooled(kind: str, key: str) -> float | None:
        return mean([r for t in names for k, r in zip(per_task[t]["kind"], per_task[t][key])
                     if k == kind])  # fmt: skip

    return {
        "per_task": table,
        "pooled": {kind: {"task_batches": sum(table[t][kind]["batches"] for t in names),
                          "spearman_last": pooled(kind, "rho_last"),
                          "spearman_max": pooled(kind, "rho_max")}
                   for kind in ("batch", "demos")},
        "mixed_groups": {"successes": len(found["adv_success"]),
                         "success_advantage": mean(found["adv_success"]),
                         "success_advantage_sparse": mean(found["adv_success_sparse"]),
                         "failures": len(found["adv_failure"]),
                         "failures_pushed_up": mean(np.asarray(found["adv_failure"]) > 0)},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", default="metaworld-flow")
    parser.add_argument("--tasks", default="MT10")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoders", nargs="+", default=["efficientnet"],
                        help="trajectory encoders to score the same rollouts with")  # fmt: skip
    parser.add_argument("--output", default="srpo_failure_order.json")
    args = parser.parse_args()

    bench = get_benchmark("metaworld")
    names = bench.resolve_task_names([args.tasks])
    tasks = bench.tasks("train", names)
    policy = load_policy(args.policy, bench)
    pg = SRPOConfig()
    pg.episodes_per_step = pg.group_size * len(names)  # what --tasks MT10 resolves to
    method = SRPO(pg, policy, bench, names)  # the default encoder's rollouts: frames recorded
    env_cfg = EnvConfig(num_envs=pg.rollout_envs, num_workers=pg.rollout_workers,
                        video_size=method.rollout_frame_size)  # fmt: skip
    context = RewardContext(bench, tasks, env_cfg)
    models = {}
    for name in args.encoders:
        models[name] = SRPOProgressReward(dataclasses.replace(pg.progress, encoder=name), policy)
        models[name].prepare(context)
    venv = policy.wrap_env(bench.make_env(tasks, env_cfg))
    engine = RolloutEngine(venv, env_cfg.pipeline_groups)
    rng = np.random.default_rng(args.seed)
    policy.temperature = pg.temperature

    found = {name: {"per_task": {t: {"kind": [], "rho_last": [], "rho_max": [], "failures": 0}
                                 for t in names},
                    "adv_success": [], "adv_success_sparse": [], "adv_failure": []}
             for name in models}  # fmt: skip
    start = time.perf_counter()
    for step in range(args.batches):
        episodes = method.episodes(tasks, rng)
        records = engine.run(policy, episodes, keep_steps=True,
                             seed=args.seed * 1_000_003 + step,
                             record_video=lambda i, s: True,
                             frames_per=method.rollout_frames_per)  # fmt: skip
        traj = Trajectories.from_episodes(records)
        for name, model in models.items():  # each batch scored on its own, as in training
            score_batch(found[name], model(traj).sum(0).numpy(), traj, names, pg)
        print(f"batch {step}: {len(records)} rollouts, {time.perf_counter() - start:.0f} s",
              flush=True)  # fmt: skip
    venv.close()

    out = {
        "policy": args.policy, "tasks": names, "batches": args.batches, "seed": args.seed,
        "rollouts_per_batch": pg.episodes_per_step, "group_size": pg.group_size,
        "encoders": {name: summarize(found[name], names) for name in models},
        "wall_s": round(time.perf_counter() - start, 1),
        "provenance": provenance(),
    }  # fmt: skip
    atomic_write_json(args.output, out)
    for name, res in out["encoders"].items():
        print(name, res["pooled"], res["mixed_groups"])


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
