"""A seed sweep (`vla-rl finetune --seeds 0 1 2`): one run per seed, one after the other, in
DIR/seed-<s>/, then DIR/sweep.json with the mean and 95% interval over seeds (overall and per
task, result and base), each seed's paired comparison with its base, and DIR/sweep_curve.png,
the learning curves with a band. A sweep run again with --resume skips the finished seeds and
resumes the interrupted one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vla_rl.core.config import ConfigError
from vla_rl.evaluation.compare import compare, read_side
from vla_rl.evaluation.protocol import text_table
from vla_rl.evaluation.stats import seed_interval
from vla_rl.io.atomic import atomic_write_json
from vla_rl.io.provenance import provenance
from vla_rl.runs.plots import save_figure, short_title
from vla_rl.runs.run import RunConfig, run_directory

SWEEP_FILE = "sweep.json"


def run_seeds(
    cfg: RunConfig, seeds: Sequence[int], finetune: Callable[[Any], dict[str, Any]]
) -> dict[str, Any]:
    """Run `finetune` once per seed (cfg with that seed, output DIR/seed-<s>) and aggregate."""
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must be distinct, got {list(seeds)}")
    root = run_directory(cfg)
    runs = []
    for seed in seeds:
        out = root / f"seed-{seed}"
        done = out / "results.json"
        if cfg.resume and done.is_file():  # finished before the sweep was interrupted
            import json

            runs.append(json.loads(done.read_text()))
            continue
        resume = cfg.resume and (out / "checkpoint").exists()
        # A seed killed before its first checkpoint left logs only: with --resume it starts
        # again (nothing is lost), instead of refusing the directory it left.
        restart = cfg.resume and not resume and out.is_dir()
        runs.append(finetune(dataclasses.replace(cfg, seed=seed, output_dir=str(out),
                                                 resume=resume,
                                                 overwrite=cfg.overwrite or restart)))  # fmt: skip
    summary = aggregate(runs, list(seeds))
    summary["config"] = {"seeds": list(seeds), "run_directories": [f"seed-{s}" for s in seeds]}
    summary["provenance"] = provenance()
    atomic_write_json(root / SWEEP_FILE, summary)
    plot_sweep_curves(runs, list(seeds), root / "sweep_curve.png",
                      f"{cfg.method} on {cfg.benchmark}, {len(seeds)} seeds")  # fmt: skip
    summary["directory"] = str(root)
    return summary


def _mean_ci(values: list[float], low: float = 0.0) -> dict[str, Any]:
    """Mean and 95% interval over seeds, the interval cut to the values' range [low, 1] (a
    t-interval over 3 rates near 1 reaches past it)."""
    lo, hi = seed_interval(values)
    return {"mean": sum(values) / len(values), "ci95": [max(lo, low), min(hi, 1.0)],
            "per_seed": values}  # fmt: skip


def aggregate(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Mean and 95% Student-t interval over seeds of the result, the base and the improvement,
    overall and per task, and each seed's paired comparison (result vs its base)."""
    tasks = list(runs[0]["per_task"])
    paired = []
    for seed, res in zip(seeds, runs):
        c = compare(read_side(res["base"], "base"), read_side(res, f"seed {seed}"))["overall"]
        paired.append({"seed": seed, "difference": c["difference"],
                       "difference_ci95": c["difference_ci95"], "mcnemar_p": c["mcnemar_p"],
                       "significant": c["significant"]})  # fmt: skip
    return {
        "seeds": seeds,
        "success_rate": _mean_ci([r["success_rate"] for r in runs]),
        "base_success_rate": _mean_ci([r["base"]["success_rate"] for r in runs]),
        "improvement": _mean_ci(
            [r["success_rate"] - r["base"]["success_rate"] for r in runs], low=-1.0
        ),
        "per_task": {
            t: {
                "success_rate": _mean_ci([r["per_task"][t]["success_rate"] for r in runs]),
                "base_success_rate": _mean_ci(
                    [r["base"]["per_task"][t]["success_rate"] for r in runs]
                ),
            }
            for t in tasks
        },  # fmt: skip
        "paired_vs_base": paired,
        "interval": "95% Student-t interval over seeds (mean +- t s / sqrt(n)); each seed's "
        "paired comparison: bootstrap over its eval episodes and McNemar's exact test",
    }


def format_sweep(summary: dict[str, Any]) -> str:
    """Per-task table of a sweep: base and result, mean [95% interval] over seeds."""

    def cell(entry: dict[str, Any]) -> str:
        lo, hi = entry["ci95"]
        return f"{entry['mean']:.3f} [{lo:.3f}, {hi:.3f}]"

    rows = [("task", "base", "result")]
    for name, e in summary["per_task"].items():
        rows.append((name, cell(e["base_success_rate"]), cell(e["success_rate"])))
    rows.append(("mean over tasks", cell(summary["base_success_rate"]),
                 cell(summary["success_rate"])))  # fmt: skip
    lines = text_table(rows)
    imp = summary["improvement"]
    lines.append(f"improvement {cell(imp)} over {len(summary['seeds'])} seeds "
                 f"(95% Student-t interval over seeds)")  # fmt: skip
    for p in summary["paired_vs_base"]:
        lo, hi = p["difference_ci95"]
        star = " *" if p["significant"] else ""
        lines.append(f"  seed {p['seed']}: paired {p['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                     f"McNemar p {p['mcnemar_p']:.3g}{star}")  # fmt: skip
    return "\n".join(lines)


def plot_sweep_curves(runs: list[dict], seeds: list[int], path: str | Path, title: str) -> None:
    """Each seed's learning curve (thin), their mean (bold) and the band between the lowest and
    the highest seed, against env steps (the k-th evaluation of every seed at their mean x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    curves = [r.get("curve", []) for r in runs]
    k = min(len(c) for c in curves)
    if k == 0:
        return
    xs = np.array([[p["env_steps"] for p in c[:k]] for c in curves]).mean(0)
    ys = np.array([[p["success_rate"] for p in c[:k]] for c in curves])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for seed, y in zip(seeds, ys):
        ax.plot(xs, y, lw=0.8, alpha=0.6, label=f"seed {seed}")
    ax.plot(xs, ys.mean(0), lw=2.2, color="black", label="mean over seeds")
    ax.fill_between(xs, ys.min(0), ys.max(0), color="gray", alpha=0.25, label="seed range")
    ax.set_xlabel("env steps")
    ax.set_ylabel("success rate (eval split)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(short_title(title, 70))
    save_figure(fig, path)
