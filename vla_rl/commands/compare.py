"""`vla-rl compare A B [C ...]`: paired comparison of results on the same episodes
(vla_rl/evaluation/compare.py); with one finetune results file, its base against its result;
with `--policies P Q ...`, the policies evaluated here on the same episodes, then compared."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vla_rl.core.benchmark import EnvConfig
from vla_rl.core.config import ConfigError, parse_cli


@dataclass
class CompareConfig:
    """`vla-rl compare A.json B.json [C.json ...]`: each of B, C, ... against A, episode by
    episode (paired bootstrap interval, McNemar's exact test); `vla-rl compare RUN/results.json`:
    a finetune run's result against its base. Results measured differently (split, episodes,
    decoding mode, observation, benchmark version) are refused."""

    results: tuple[str, ...] = ()
    """results.json files of `vla-rl eval` or `vla-rl finetune` (also accepted positionally,
    before the flags)."""
    output: str = ""
    """Write the comparison as JSON here (atomically); empty: print only."""
    plot: str = ""
    """Save a PNG of the per-task success rates with their 95% intervals here; empty: none."""
    policies: tuple[str, ...] = ()
    """Instead of results files: policies (registered names or checkpoint directories) to
    evaluate here, one after the other, with the same protocol and seed (so on the same
    episodes with the same noise), then compare. The flags below apply to them."""
    benchmark: str = "metaworld"
    """With --policies: the benchmark whose eval split they run on."""
    tasks: tuple[str, ...] = ()
    """With --policies: tasks or task sets (empty: the benchmark's default set, MT10)."""
    episodes: int | None = None
    """With --policies: episodes per task (None: every eval initial state)."""
    seed: int = 0
    """With --policies: the eval seed, which keys every episode's noise (the same for all)."""
    deterministic: bool = True
    """With --policies: the policies' deterministic actions (False: sampled)."""
    results_dir: str = ""
    """With --policies: also write each policy's results.json to RESULTS_DIR/<i>/."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """With --policies: the envs they run on."""
    progress: bool = True
    """With --policies: show a progress bar per evaluation."""


def main(args: list[str]) -> int:
    from vla_rl.evaluation.compare import compare, format_comparison, sides_from_files
    from vla_rl.io.atomic import atomic_write_json, check_output_location
    from vla_rl.runs.plots import plot_comparison_bars

    positional = []
    while args and not args[0].startswith("-"):
        positional.append(args.pop(0))
    cfg = parse_cli(CompareConfig, args, prog="vla-rl compare", description=CompareConfig.__doc__)
    paths = positional + list(cfg.results)
    if bool(paths) == bool(cfg.policies):
        raise ConfigError(
            "name the results files to compare (vla-rl compare A.json B.json) or the policies "
            "to evaluate and compare (--policies P Q), not both"
        )
    for flag, path in (("--output", cfg.output), ("--plot", cfg.plot)):
        if path:
            check_output_location(path, directory=False, flag=flag)
    if cfg.results_dir:
        check_output_location(cfg.results_dir, directory=True, flag="--results-dir")
    sides = sides_from_files(paths) if paths else evaluate_policies(cfg)
    if len(sides) < 2:
        raise ConfigError("compare needs two results (or one finetune results file with a base)")
    comparisons = [compare(sides[0], side) for side in sides[1:]]  # every check before writing
    for result in comparisons:
        print(format_comparison(result) + "\n")
    if cfg.output:
        atomic_write_json(cfg.output, comparisons if len(comparisons) > 1 else comparisons[0])
    if cfg.plot:
        plot_comparison_bars(comparisons, cfg.plot)
    return 0


def evaluate_policies(cfg: CompareConfig) -> list:
    """Each of cfg.policies through the eval protocol with the same settings and seed."""
    from vla_rl.core.benchmark import apply_policy_observation, get_benchmark
    from vla_rl.core.policy import load_policy
    from vla_rl.evaluation.compare import read_side
    from vla_rl.evaluation.protocol import evaluate

    if cfg.episodes is not None and cfg.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {cfg.episodes}")
    benchmark = get_benchmark(cfg.benchmark, env=cfg.env)
    benchmark.resolve_task_names(list(cfg.tasks) or None)
    policies = [load_policy(name, benchmark) for name in cfg.policies]  # all load, then run
    sides = []
    for i, (name, policy) in enumerate(zip(cfg.policies, policies)):
        env = apply_policy_observation(benchmark, cfg.env, policy)
        out = Path(cfg.results_dir) / str(i) if cfg.results_dir else None
        results = evaluate(policy, benchmark, task_names=list(cfg.tasks) or None,
                           episodes_per_task=cfg.episodes, env_cfg=env, seed=cfg.seed,
                           deterministic=cfg.deterministic, output_dir=out,
                           progress=cfg.progress, config={"policy": name})  # fmt: skip
        sides.append(read_side(results, name))
    return sides
