"""`vla-rl compare A B [C ...]`: paired comparison of results on the same episodes
(vla_rl/evaluation/compare.py); with one finetune results file, its base against its result."""

from __future__ import annotations

from dataclasses import dataclass

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


def main(args: list[str]) -> int:
    from vla_rl.evaluation.compare import compare, format_comparison, sides_from_files
    from vla_rl.io.atomic import atomic_write_json, check_output_location
    from vla_rl.runs.plots import plot_comparison_bars

    positional = []
    while args and not args[0].startswith("-"):
        positional.append(args.pop(0))
    cfg = parse_cli(CompareConfig, args, prog="vla-rl compare", description=CompareConfig.__doc__)
    paths = positional + list(cfg.results)
    if not paths:
        raise ConfigError("name the results files to compare: vla-rl compare A.json B.json")
    for flag, path in (("--output", cfg.output), ("--plot", cfg.plot)):
        if path:
            check_output_location(path, directory=False, flag=flag)
    sides = sides_from_files(paths)
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
