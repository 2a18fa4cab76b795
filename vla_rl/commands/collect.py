"""`vla-rl collect`: roll a policy out on a benchmark's TRAIN split and save the episodes as a
LeRobot v3.0 demonstration dataset (the scripted experts by default, optionally noisy)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vla_rl.core import noise
from vla_rl.core.benchmark import (
    EnvConfig,
    apply_policy_observation,
    first_episodes,
    get_benchmark,
)
from vla_rl.core.config import ConfigError, parse_cli, to_dict
from vla_rl.core.policy import BasePolicy, load_policy
from vla_rl.core.types import ActionSample, Observation
from vla_rl.data.episodes import records_to_episodes
from vla_rl.data.lerobot_dataset import write_dataset
from vla_rl.evaluation.progress import episode_progress
from vla_rl.evaluation.protocol import default_task_selection
from vla_rl.io.atomic import check_output_location
from vla_rl.io.provenance import provenance
from vla_rl.methods.residual.base_action_queue import BaseActionQueue
from vla_rl.rollout.engine import RolloutEngine


class StepActions(BasePolicy):
    """Acts with the policy whose chunks `BaseActionQueue` runs beside the env: one env step
    (Ta = 1) of `obs["base_action"]`, plus Gaussian noise of std `action_noise` drawn from the
    episode's own stream (`vla_rl.core.noise`: the same episodes get the same noise whatever
    the batch), clipped to [-1, 1] (the normalised action space of every benchmark here)."""

    policy_type = "step-actions"

    def __init__(self, policy: BasePolicy, action_noise: float = 0.0):
        super().__init__()
        self.policy_name = policy.policy_type
        self.action_noise = action_noise

    def sample_actions(self, obs: Observation, deterministic: bool = False) -> ActionSample:
        actions = torch.as_tensor(obs["base_action"], dtype=torch.float32)[:, None]  # (B, 1, Da)
        if self.action_noise > 0:
            keys, shape = noise.noise_keys(obs), tuple(actions.shape[1:])
            draw = noise.standard_normal(keys, len(actions), shape, "collect-action-noise")
            actions = (actions + self.action_noise * draw).clamp(-1.0, 1.0)
        return ActionSample(actions=actions)


@dataclass
class CollectConfig:
    """`vla-rl collect`: demonstrations from the train split, written as a LeRobot v3.0 dataset."""

    output: str = "runs/datasets/metaworld-mt10"
    """Dataset directory to write (replaced atomically if it exists)."""
    policy: str = "scripted"
    """Policy that acts: a registered name or a checkpoint directory. A policy with action
    chunks (Ta > 1) runs them open-loop one env step at a time (`BaseActionQueue`), so the
    dataset still has one frame and one action per env step."""
    benchmark: str = "metaworld"
    """A registered benchmark (see `vla-rl benchmarks`)."""
    tasks: tuple[str, ...] = ()
    """Task names and/or set names; empty = the benchmark's default set (Meta-World: MT10)."""
    episodes: int = 10
    """Episodes per task, from the first train initial states in order (never eval states)."""
    action_noise: float = 0.0
    """Std of Gaussian noise added to every action, then clipped to the action space (0 = the
    policy's own actions); noisier demonstrations cover more states (DART-style) at some cost
    in success, and noisy policy rollouts give a critic or world model its failures."""
    deterministic: bool = False
    """Query the policy's deterministic action (greedy / mean) instead of sampling; the action
    noise still applies."""
    successes_only: bool = True
    """Keep only episodes that reached the goal (behaviour cloning wants good demonstrations)."""
    seed: int = 0
    """Seeds the policy's sampling (and the action noise)."""
    progress: bool = True
    """Show a progress bar."""
    env: EnvConfig = field(default_factory=lambda: EnvConfig(video_size=0))


def collect(cfg: CollectConfig) -> dict:
    if cfg.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {cfg.episodes}")
    if cfg.action_noise < 0:
        raise ConfigError(f"--action-noise must be >= 0, got {cfg.action_noise}")
    check_output_location(cfg.output, directory=True, flag="--output")  # before the rollouts
    benchmark = get_benchmark(cfg.benchmark, env=cfg.env)
    names = benchmark.resolve_task_names(list(cfg.tasks) or default_task_selection(benchmark))
    policy: BasePolicy = load_policy(cfg.policy, benchmark)
    cfg.env = apply_policy_observation(benchmark, cfg.env, policy)
    if cfg.action_noise and hasattr(policy, "action_noise"):
        policy.action_noise = cfg.action_noise  # the scripted experts add it themselves
        actor: BasePolicy = policy
    else:
        actor = StepActions(policy, cfg.action_noise)
    tasks = benchmark.tasks("train", names)
    episodes = first_episodes(tasks, cfg.episodes)

    bar, on_end = episode_progress(len(episodes), f"collect {benchmark.name}", cfg.progress)
    venv = policy.wrap_env(benchmark.make_env(tasks, dataclasses.replace(cfg.env, video_size=0)))
    if actor is not policy:  # the policy's chunks run one env step at a time
        venv = BaseActionQueue(venv, policy, deterministic=cfg.deterministic)
    try:
        records = RolloutEngine(venv, cfg.env.pipeline_groups).run(
            actor, episodes, keep_steps=True, seed=cfg.seed, on_episode_end=on_end,
            deterministic=cfg.deterministic,
        )  # fmt: skip
    finally:
        venv.close()
        if bar is not None:
            bar.close()

    kept = [r for r in records if r.success or not cfg.successes_only]
    if not kept:
        raise ValueError("no episode succeeded; nothing to write (try --no-successes-only)")
    per_task = {name: {"episodes": 0, "successes": 0, "kept": 0} for name in names}
    for r in records:
        entry = per_task[r.spec.task.name]
        entry["episodes"] += 1
        entry["successes"] += int(r.success)
        entry["kept"] += int(r in kept)
    summary = {
        "episodes": len(records),
        "successes": sum(r.success for r in records),
        "kept": len(kept),
        "frames": sum(r.env_steps for r in kept),
        "per_task": per_task,
    }
    write_dataset(
        cfg.output,
        records_to_episodes(kept, benchmark),
        fps=benchmark.fps,
        robot_type=benchmark.name,
        extra_info={
            "vla_rl": {
                "benchmark": benchmark.name,
                "split": "train",
                "init_ids": {  # which train initial states the kept episodes started from
                    name: [r.spec.init_id for r in kept if r.spec.task.name == name]
                    for name in names
                },
                "summary": summary,
                "config": to_dict(cfg),
                "provenance": provenance(),
            }
        },
    )
    return summary


def print_summary(cfg: CollectConfig, summary: dict) -> None:
    print(f"\n{'task':<28} {'episodes':>8} {'successes':>9} {'kept':>5}")
    for name, e in summary["per_task"].items():
        print(f"{name:<28} {e['episodes']:>8} {e['successes']:>9} {e['kept']:>5}")
    print(
        f"\nkept {summary['kept']} of {summary['episodes']} episodes ({summary['frames']} frames); "
        f"LeRobot v3.0 dataset written to {Path(cfg.output)}"
    )


def main(args: list[str]) -> int:
    cfg = parse_cli(CollectConfig, args, prog="vla-rl collect", description=CollectConfig.__doc__)
    print_summary(cfg, collect(cfg))
    return 0
