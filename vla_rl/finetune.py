"""`vla-rl finetune`: post-train a base policy with an RL method on a benchmark.

    vla-rl finetune --base metaworld-flow --method residual --benchmark metaworld \
        --tasks button-press-topdown-v3 --env-steps 10000

The options every method shares live in `FinetuneConfig`; each method's own hyperparameters are
a nested dataclass (`--residual.utd 4`). A method is one file in `vla_rl/methods/` whose
`train(cfg)` reads top to bottom and uses the helpers below for what every method does the same
way: the eval protocol during and after training, the run directory, the results file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from vla_rl.atomic_io import atomic_write_json
from vla_rl.benchmark import Benchmark, EnvConfig
from vla_rl.config import ConfigError
from vla_rl.evaluation import curve_point, evaluate
from vla_rl.methods.grpo import GRPOConfig
from vla_rl.methods.ppo import PPOConfig
from vla_rl.methods.residual import ResidualConfig
from vla_rl.methods.srpo import SRPOConfig
from vla_rl.policies.vla_checkpoint import BaseLoadConfig
from vla_rl.policy import BasePolicy
from vla_rl.provenance import provenance


@dataclass
class FinetuneConfig:
    """`vla-rl finetune`: improve a base policy with RL on a benchmark's train split."""

    base: str = "metaworld-flow"
    """Base policy: a registered name (e.g. the bundled metaworld-flow), a checkpoint dir, or a
    real VLA family (openvla, openvla-oft, pi0, smolvla) with --base-path."""
    base_path: str | None = None
    """The published checkpoint directory of a real VLA family given as --base (its own on-disk
    format; README "Real VLA bases")."""
    base_load: BaseLoadConfig = field(default_factory=BaseLoadConfig)
    """How a real VLA checkpoint is loaded (unnorm key, dtype, cameras, ...)."""
    method: str = "residual"
    """RL method: residual (ResFiT, a frozen base plus a learned residual), ppo (VLA-RL's
    trajectory-level PPO), grpo (group-relative, SimpleVLA-RL) or srpo (GRPO with SRPO's
    progress reward); the last three update the base's own weights."""
    benchmark: str = "metaworld"
    """A registered benchmark (see `vla-rl benchmarks`)."""
    tasks: tuple[str, ...] = ("button-press-topdown-v3",)
    """Tasks (or set names) to train and evaluate on. Default: one MT10 task on which the bundled
    base succeeds about half the time (docs/RESULTS.md), so a few minutes show a change."""
    env_steps: int = 10_000
    """Env steps (control steps, summed over parallel envs) of RL; the default fits the README's
    few-minute main job on a 2-core CPU; docs/RESULTS.md states the budget of each result."""
    output_dir: str | None = None
    """Run directory (checkpoint/, policy/, metrics, results.json, plot, videos). None:
    runs/finetune/<method>/<timestamp>."""
    eval_every: int = 5_000
    """Env steps between evaluations on the eval split (plus one before training and one at
    the end)."""
    eval_episodes: int = 20
    """Episodes per task at each periodic evaluation (the first eval initial states, in order)."""
    final_eval_episodes: int | None = None
    """Episodes per task of the final evaluation of the result and of the base beside it.
    None: every eval initial state (Meta-World 50, LIBERO 25 per task)."""
    videos: int = 2
    """Final-evaluation episodes per task saved as MP4 (videos/ in the run directory)."""
    resume: bool = False
    """Continue from output_dir/checkpoint (needs --output-dir)."""
    seed: int = 0
    """Seeds torch, numpy and the choice of training initial states."""
    logger: str = "tensorboard"
    """Metrics backend beside metrics.jsonl: tensorboard, wandb (offline) or none."""
    progress: bool = True
    """Show a progress bar (env steps/s, ETA, train and eval success)."""
    env: EnvConfig = field(
        default_factory=lambda: EnvConfig(num_envs=4, num_workers=1, video_size=0)
    )
    """Training envs. 4 envs in 1 worker by default: the learner's updates, not the simulator,
    take most of the time (about 31 env steps/s with updates against ~1000 for Meta-World alone
    on this machine), so the main process keeps the second core for them."""
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    """Hyperparameters of --method residual."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """Hyperparameters of --method ppo."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """Hyperparameters of --method grpo."""
    srpo: SRPOConfig = field(default_factory=SRPOConfig)
    """Hyperparameters of --method srpo."""


def check_finetune_config(cfg: FinetuneConfig) -> None:
    for name in ("env_steps", "eval_every", "eval_episodes"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.final_eval_episodes is not None and cfg.final_eval_episodes < 1:
        raise ConfigError(f"--final-eval-episodes must be >= 1, got {cfg.final_eval_episodes}")
    if cfg.videos < 0:
        raise ConfigError(f"--videos must be >= 0, got {cfg.videos}")
    if cfg.resume and cfg.output_dir is None:
        raise ConfigError("--resume needs --output-dir (the run to continue)")


def run_directory(cfg: FinetuneConfig) -> Path:
    return Path(cfg.output_dir or f"runs/finetune/{cfg.method}/{datetime.now():%Y%m%d-%H%M%S}")


def eval_point(
    policy: BasePolicy,
    benchmark: Benchmark,
    cfg: FinetuneConfig,
    tasks: list[str],
    progress_state: dict[str, Any],
) -> dict[str, Any]:
    """One point of the learning curve: the eval protocol on cfg.eval_episodes per task."""
    res = evaluate(
        policy,
        benchmark,
        task_names=tasks,
        episodes_per_task=cfg.eval_episodes,
        env_cfg=cfg.env,
        seed=cfg.seed,
        progress=False,
    )
    return {
        "env_steps": progress_state["env_steps"],
        "updates": progress_state.get("updates", 0),
        "wall_s": round(progress_state["wall_s"], 1),
        **curve_point(res),
    }


def final_results(
    policy: BasePolicy,
    base: BasePolicy,
    benchmark: Benchmark,
    cfg: FinetuneConfig,
    tasks: list[str],
    run: Path,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate the result and the base with the same protocol; write run/results.json in the
    eval format (per-task table of the result) with the base's results beside it."""
    from vla_rl.config import to_dict

    common = dict(task_names=tasks, episodes_per_task=cfg.final_eval_episodes, env_cfg=cfg.env,
                  seed=cfg.seed, progress=cfg.progress)  # fmt: skip
    results = evaluate(policy, benchmark, videos_per_task=cfg.videos, output_dir=run / "eval",
                       **common)  # type: ignore[arg-type]  # fmt: skip
    base_results = evaluate(base, benchmark, **common)  # type: ignore[arg-type]
    keys = ("success_rate", "success_ci95", "successes", "num_episodes", "per_task")
    results["base"] = {k: base_results[k] for k in keys}
    results["improvement"] = round(results["success_rate"] - base_results["success_rate"], 4)
    results.update(extra)
    results["config"] = to_dict(cfg)
    results["provenance"] = provenance()
    atomic_write_json(run / "results.json", results)
    return results


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    from vla_rl.registry import METHODS

    check_finetune_config(cfg)
    train = METHODS.get(cfg.method)
    return train(cfg)


def load_state(run: Path) -> dict[str, Any] | None:
    path = run / "checkpoint" / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class RunSetup:
    """What every method builds first, the same way: benchmark, task names and train split, the
    base policy, the run directory and (with --resume) the saved state."""

    benchmark: Benchmark
    names: list[str]
    train_tasks: list
    base: BasePolicy
    run: Path
    saved: dict[str, Any] | None


def setup_run(cfg: FinetuneConfig) -> RunSetup:
    """Resolve the benchmark, tasks and base, and find the checkpoint to resume; writes nothing."""
    from vla_rl.benchmark import get_benchmark
    from vla_rl.policy import load_policy

    benchmark = get_benchmark(cfg.benchmark)
    names = benchmark.resolve_task_names(list(cfg.tasks) or None)
    base = load_policy(cfg.base, benchmark, cfg.base_path, cfg.base_load)
    run = run_directory(cfg)
    saved = load_state(run) if cfg.resume else None
    if cfg.resume and saved is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {run / 'checkpoint'}")
    return RunSetup(benchmark, names, benchmark.tasks("train", names), base, run, saved)
