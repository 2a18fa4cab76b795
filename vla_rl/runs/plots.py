"""Learning curves as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vla_rl.io.atomic import atomic_file


def save_figure(fig, path: str | Path) -> None:
    """Write `fig` as a PNG atomically and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


def short_title(title: str, width: int = 90) -> str:
    """A title that fits the figure: a run on MT10 lists ten task names."""
    return title if len(title) <= width else title[: width - 3].rstrip(", ") + "..."


def plot_learning_curve(
    points: list[dict], path: str | Path, title: str, x_keys: tuple[str, ...] = ("step", "wall_s")
) -> None:
    """Success rate with its 95% interval against each of `x_keys`, one panel each.

    points: dicts with the x keys, "success_rate" and "ci95" ([low, high]).
    """
    plot_comparison({"eval success (95% Wilson interval shaded)": points}, path, title, x_keys)


def plot_comparison(
    runs: dict[str, list[dict]], path: str | Path, title: str, x_keys: tuple[str, ...]
) -> None:
    """Several runs' learning curves in one figure (one panel per x key): success rate with its
    95% interval per run. runs: label -> curve points as in `plot_learning_curve`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"step": "training step", "env_steps": "env steps", "rl_steps": "RL steps",
              "wall_s": "training wall-clock (s)"}  # fmt: skip
    fig, axes = plt.subplots(1, len(x_keys), figsize=(5.5 * len(x_keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], x_keys):
        for label, points in runs.items():
            xs = [p[key] for p in points]
            line = ax.plot(xs, [p["success_rate"] for p in points], marker="o", ms=3, label=label)
            ax.fill_between(xs, [p["ci95"][0] for p in points], [p["ci95"][1] for p in points],
                            alpha=0.2 if len(runs) == 1 else 0.12,
                            color=line[0].get_color())  # fmt: skip
        ax.set_xlabel(labels.get(key, key))
        ax.set_ylabel("success rate (eval split)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="lower right")
    fig.suptitle(short_title(title))
    save_figure(fig, path)


def plot_per_task_curves(
    points: list[dict], path: str | Path, title: str, x_key: str = "env_steps"
) -> None:
    """One line per task (points' "per_task" rates) and the mean over tasks, against x_key:
    where a multi-task run learns and where it does not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = [p[x_key] for p in points]
    for task in points[0]["per_task"]:
        ax.plot(xs, [p["per_task"].get(task, float("nan")) for p in points], marker="o", ms=2,
                lw=1, label=task)  # fmt: skip
    ax.plot(xs, [p["success_rate"] for p in points], color="black", lw=2.5, label="mean")
    ax.set_xlabel({"env_steps": "env steps"}.get(x_key, x_key))
    ax.set_ylabel("success rate (eval split)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    ax.set_title(short_title(title), fontsize=10)
    save_figure(fig, path)


def plot_success_bars(groups: dict[str, dict[str, dict]], path: str | Path, title: str) -> None:
    """Success rates with 95% intervals as grouped bars: groups maps a panel title (a policy)
    to label -> results (`evaluate`'s dict: "success_rate", "success_ci95")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.8), squeeze=False)
    for ax, (name, runs) in zip(axes[0], groups.items()):
        rates = [r["success_rate"] for r in runs.values()]
        lows = [r["success_rate"] - r["success_ci95"][0] for r in runs.values()]
        highs = [r["success_ci95"][1] - r["success_rate"] for r in runs.values()]
        ax.bar(range(len(runs)), rates, yerr=[lows, highs], capsize=4, color="tab:blue", alpha=0.7)
        ax.set_xticks(range(len(runs)), list(runs), rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("success rate (eval split, 95% CI)")
        ax.set_title(name)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    save_figure(fig, path)


def plot_loss_curve(losses: list[float], path: str | Path, title: str, ylabel: str) -> None:
    """A training loss per epoch, on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(range(1, len(losses) + 1), losses, marker="o", ms=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title(short_title(title), fontsize=10)
    save_figure(fig, path)


def plot_comparison_bars(results: list[dict[str, Any]], path: str | Path) -> None:
    """Per-task success rates of A and of every B with their 95% Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(results[0]["per_task"]) + ["mean over tasks"]
    labels = [results[0]["a"]] + [r["b"] for r in results]
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(tasks) * len(labels)), 4.2))
    x = np.arange(len(tasks))
    for j, label in enumerate(labels):
        side = "a" if j == 0 else "b"
        res = results[max(j - 1, 0)]
        rows = [res["per_task"][t] for t in tasks[:-1]] + [res["overall"]]
        rates = np.array([r[side] for r in rows])
        ci = np.array([r[f"{side}_ci95"] for r in rows])
        ax.bar(x + (j - (len(labels) - 1) / 2) * width, rates, width, label=short_title(label, 60),
               yerr=np.clip([rates - ci[:, 0], ci[:, 1] - rates], 0, None),
               capsize=2)  # fmt: skip
    ax.set_xticks(x, tasks, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("success rate (95% Wilson interval)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("paired comparison on the same episodes")
    save_figure(fig, path)
