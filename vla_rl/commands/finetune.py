"""`vla-rl finetune`: post-train a base policy with an RL method on a benchmark.

    vla-rl finetune --base metaworld-flow --method residual --benchmark metaworld \
        --tasks button-press-topdown-v3 --env-steps 10000

The options every method shares are `RunConfig`'s (vla_rl/runs/run.py); each method's own
hyperparameters are one nested dataclass here, named as the method (`--residual.utd 4`). A method
is registered in `METHODS` and exposes `train(run_cfg, method_cfg)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_rl.core.config import ConfigError, parse_cli
from vla_rl.core.registry import METHODS
from vla_rl.evaluation.protocol import format_table
from vla_rl.methods.grpo import GRPOConfig
from vla_rl.methods.on_policy import PolicyGradientConfig, check_pg_config
from vla_rl.methods.ppo import PPOConfig
from vla_rl.methods.residual.config import ResidualConfig
from vla_rl.methods.srpo import SRPOConfig
from vla_rl.runs.ray_train import RayTrainConfig, check_ray_train_config, inside_ray_train
from vla_rl.runs.run import RunConfig, check_run_config, run_directory


@dataclass
class FinetuneConfig(RunConfig):
    """`vla-rl finetune`: improve a base policy with RL on a benchmark's train split."""

    residual: ResidualConfig = field(default_factory=ResidualConfig)
    """Hyperparameters of --method residual."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """Hyperparameters of --method ppo."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """Hyperparameters of --method grpo."""
    srpo: SRPOConfig = field(default_factory=SRPOConfig)
    """Hyperparameters of --method srpo."""
    ray_train: RayTrainConfig = field(default_factory=RayTrainConfig)
    """Launch on Ray Train's ranks instead of torchrun's (--ray-train.workers N)."""
    seeds: tuple[int, ...] = ()
    """A seed sweep: one run per seed, one after the other, in OUTPUT_DIR/seed-<s>, then
    OUTPUT_DIR/sweep.json (mean and 95% interval over seeds, per task, each seed's paired
    comparison with its base) and sweep_curve.png. Empty: one run with --seed."""


def method_config(cfg: FinetuneConfig) -> Any:
    """The hyperparameters of cfg.method: the field named as the method (a test checks that
    every registered method has one)."""
    name = cfg.method.replace("-", "_")
    METHODS.get(cfg.method)  # an unknown method fails here, naming the valid ones
    if not hasattr(cfg, name):
        raise ConfigError(f"method {cfg.method!r} has no settings field --{cfg.method}.*")
    return getattr(cfg, name)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    check_run_config(cfg)
    train = METHODS.get(cfg.method)
    settings = method_config(cfg)
    # the on-policy methods' update is data-parallel (vla_rl.methods.on_policy)
    check_ray_train_config(cfg.ray_train, cfg.method, isinstance(settings, PolicyGradientConfig))
    if cfg.ray_train.workers and not inside_ray_train():  # the driver: place the ranks, wait
        from vla_rl.runs.ray_train import launch

        check_pg_config(settings, cfg.method)  # one line here, not a traceback from a rank
        return launch(cfg, finetune, run_directory(cfg))
    return train(cfg, settings)


def rename_legacy_flags(args: list[str], legacy: dict[str, str]) -> list[str]:
    """Rewrite flags renamed since they were published (`legacy`: old -> new; a key ending in
    "." renames every flag under it). `--a.b_c` and `--a.b-c`, `--flag value` and
    `--flag=value` are all recognised."""
    out = []
    for arg in args:
        if arg.startswith("--"):
            flag, eq, value = arg.partition("=")
            flag = flag.replace("_", "-")
            for old, new in legacy.items():
                if flag == old or (old.endswith(".") and flag.startswith(old)):
                    arg = new + flag[len(old) :] + eq + value
                    break
        out.append(arg)
    return out


def main(args: list[str]) -> int:
    from vla_rl.methods.srpo import LEGACY_FLAGS

    cfg = parse_cli(FinetuneConfig, rename_legacy_flags(args, LEGACY_FLAGS),
                    prog="vla-rl finetune", description=FinetuneConfig.__doc__)  # fmt: skip
    if cfg.seeds:
        from vla_rl.runs.sweep import format_sweep, run_seeds

        summary = run_seeds(cfg, cfg.seeds, finetune)
        where = cfg.eval_benchmark or cfg.benchmark
        print(f"\n{cfg.method} on base {cfg.base}, {where} eval split, seeds "
              f"{' '.join(map(str, cfg.seeds))}")  # fmt: skip
        print(format_sweep(summary))
        print(f"sweep: {Path(summary['directory']) / 'sweep.json'}; plot: "
              f"{Path(summary['directory']) / 'sweep_curve.png'}")  # fmt: skip
        return 0
    res = finetune(cfg)
    from vla_rl.rl.distributed import is_main

    if not is_main():  # under torchrun every rank returns rank 0's results: print them once
        return 0
    base = res["base"]
    print()
    print(f"{cfg.method} on base {cfg.base}, {cfg.eval_benchmark or cfg.benchmark} eval split")
    print(format_table(res))
    (lo, hi), (blo, bhi) = res["success_ci95"], base["success_ci95"]
    print(
        f"\nbase {base['success_rate']:.3f} [{blo:.3f}, {bhi:.3f}] -> finetuned "
        f"{res['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] after {res['env_steps']} env steps "
        f"({res['train_wall_s']:.0f} s of training)"
    )
    run = Path(res["policy_dir"]).parent
    print(f"results: {run / 'results.json'}; plot: {run / 'learning_curve.png'}; "
          f"policy: {res['policy_dir']} (vla-rl eval --policy {res['policy_dir']})")  # fmt: skip
    return 0
