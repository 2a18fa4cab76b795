"""`vla-rl benchmarks`: list benchmarks, task sets, tasks, split sizes and policies."""

from __future__ import annotations

from dataclasses import dataclass

from vla_rl.core.config import ConfigError, parse_cli


@dataclass
class BenchmarksConfig:
    """`vla-rl benchmarks`: list benchmarks, their task sets and tasks."""

    name: str | None = None
    """Show only this benchmark (all tasks with their instructions)."""


def main(args: list[str]) -> int:
    from vla_rl.core.registry import BACKENDS, BENCHMARKS, METHODS, POLICIES, REWARDS

    cfg = parse_cli(BenchmarksConfig, args, prog="vla-rl benchmarks")
    names = [cfg.name] if cfg.name else BENCHMARKS.names()
    for name in names:
        BENCHMARKS._check(name)
    for name in names:
        print(f"{name}: {BENCHMARKS.description(name)}")
        try:
            bench = BENCHMARKS.get(name)()
        except ImportError as err:
            print(f"    not installed ({err}); `vla-rl doctor` says how to install it")
            continue
        for set_name, members in bench.task_sets().items():
            print(f"    set {set_name}: {len(members)} tasks")
        try:
            tasks = bench.tasks("eval")
        except ConfigError as err:  # a benchmark built from a directory (a world model)
            print(f"    {err}")
            continue
        n_train = len(bench.tasks("train", [tasks[0].name])[0].init_ids)
        print(f"    {len(tasks)} tasks; per task {n_train} train / {len(tasks[0].init_ids)} eval "
              f"initial states; horizon {tasks[0].max_steps} env steps")  # fmt: skip
        for task in tasks if cfg.name else tasks[:3]:
            print(f"      {task.name}: {task.instruction!r}")
        if not cfg.name and len(tasks) > 3:
            print(f"      ... (`vla-rl benchmarks --name {name}` lists all {len(tasks)})")
    if not cfg.name:
        print("\npolicies: " + ", ".join(POLICIES.names()) + ", or a checkpoint directory")
        for title, registry in (("methods", METHODS), ("rewards (--<method>.reward)", REWARDS),
                                ("backends (--env.backend)", BACKENDS)):  # fmt: skip
            print(f"\n{title}:")
            for name in registry.names():
                print(f"    {name}: {registry.description(name)}")
    return 0
