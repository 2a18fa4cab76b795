"""The evaluation protocol, shared by `vla-rl eval` and the periodic evaluations of every method.

Fixed eval split (never the train initial states), a fixed number of episodes per task taken in
a fixed order, fixed seeds, success rates with 95% Wilson intervals per task and overall, and one
results.json that stores the resolved config, the git commit and package versions.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vla_rl.core.benchmark import Benchmark, EnvConfig, first_episodes, observation_label
from vla_rl.core.policy import BasePolicy
from vla_rl.core.trajectories import EpisodeRecord
from vla_rl.evaluation.progress import episode_progress
from vla_rl.evaluation.stats import wilson_interval
from vla_rl.io.atomic import atomic_write_json
from vla_rl.io.provenance import package_versions, provenance
from vla_rl.rollout.engine import RolloutEngine


def default_task_selection(benchmark: Benchmark) -> list[str]:
    sets = benchmark.task_sets()
    return list(sets["MT10"]) if "MT10" in sets else benchmark.task_names()


def summarize(records: Sequence[EpisodeRecord]) -> dict[str, Any]:
    """Per-task and overall success with Wilson 95% intervals, and per-episode outcomes."""
    per_task: dict[str, dict[str, Any]] = {}
    for r in records:
        entry = per_task.setdefault(r.spec.task.name, {"successes": 0, "episodes": 0, "steps": 0})
        entry["successes"] += int(r.success)
        entry["episodes"] += 1
        entry["steps"] += r.env_steps
    for entry in per_task.values():
        k, n = entry["successes"], entry["episodes"]
        entry["success_rate"] = k / n
        entry["ci95"] = list(wilson_interval(k, n))
        entry["mean_env_steps"] = entry.pop("steps") / n
    total_k = sum(e["successes"] for e in per_task.values())
    total_n = sum(e["episodes"] for e in per_task.values())
    at_end: dict[str, list[bool]] = {}
    for r in records:  # an episode that ended at its success step ends in a success state
        at_end.setdefault(r.spec.task.name, []).append(r.success and r.terminated)
    return {
        # Mean over tasks (each task weighs the same, as LIBERO and Meta-World report it); equal
        # to the pooled rate when every task has the same number of episodes.
        "success_rate": sum(e["success_rate"] for e in per_task.values()) / max(len(per_task), 1),
        "success_ci95": list(wilson_interval(total_k, total_n)),
        "successes": total_k,
        "num_episodes": total_n,
        "per_task": per_task,
        # Peers count success either at any step or at the episode's end; set beside theirs.
        "success_definitions": {
            "any_step": sum(e["success_rate"] for e in per_task.values()) / max(len(per_task), 1),
            "at_end": sum(sum(v) / len(v) for v in at_end.values()) / max(len(at_end), 1),
            "note": "success_rate counts success at any step; episodes end at their first "
            "success (Meta-World, LIBERO), so the two agree",
        },
        "episodes": [
            {
                "task": r.spec.task.name,
                "init_id": r.spec.init_id,
                "success": r.success,
                "env_steps": r.env_steps,
                "return": round(r.episode_return, 4),
                "terminated": r.terminated,
                "truncated": r.truncated,
            }
            for r in records
        ],
    }


def evaluate(
    policy: BasePolicy,
    benchmark: Benchmark,
    *,
    task_names: Sequence[str] | None = None,
    episodes_per_task: int | None = None,
    env_cfg: EnvConfig | None = None,
    seed: int = 0,
    deterministic: bool = True,
    videos_per_task: int = 0,
    output_dir: str | Path | None = None,
    progress: bool = True,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the eval protocol; write results.json (and videos) to `output_dir` when given."""
    env_cfg = env_cfg or EnvConfig()
    if not videos_per_task:
        env_cfg = dataclasses.replace(env_cfg, video_size=0)
    elif not env_cfg.video_size:  # videos asked of envs configured to render none
        env_cfg = dataclasses.replace(env_cfg, video_size=EnvConfig().video_size)
    names = benchmark.resolve_task_names(task_names or default_task_selection(benchmark))
    tasks = benchmark.tasks("eval", names)
    n = episodes_per_task or min(len(t.init_ids) for t in tasks)
    episodes = first_episodes(tasks, n)

    def wants_video(idx: int, spec) -> bool:
        return videos_per_task > 0 and (idx % n) < videos_per_task

    bar, on_end = episode_progress(len(episodes), f"eval {benchmark.name}", progress)

    venv = policy.wrap_env(benchmark.make_env(tasks, env_cfg))
    try:
        engine = RolloutEngine(venv, env_cfg.pipeline_groups)
        start = time.perf_counter()
        records = engine.run(
            policy,
            episodes,
            deterministic=deterministic,
            record_video=wants_video if videos_per_task else None,
            seed=seed,
            on_episode_end=on_end,
        )
        wall = time.perf_counter() - start
    finally:
        venv.close()
        if bar is not None:
            bar.close()

    results = summarize(records)
    # What `vla-rl compare` checks before it pairs two results episode by episode.
    results["protocol"] = {
        "benchmark": benchmark.name,
        "split": "eval",
        "episodes_per_task": n,
        "deterministic": deterministic,
        "seed": seed,  # keys the episodes' noise streams (vla_rl.core.noise)
        "observation": observation_label(env_cfg),
        "benchmark_version": package_versions(benchmark.packages),
    }
    stats = engine.last_stats
    results["timing"] = {
        "wall_s": round(wall, 2),
        "episodes_per_s": round(len(records) / wall, 3),
        "env_steps": stats.env_steps,
        "env_steps_per_s": round(stats.env_steps / wall, 1),
        "policy_s": round(stats.policy_s, 2),
        "env_s": round(stats.env_s, 2),
        # Episodes started again from their initial state because their env's worker died or
        # hung (and was replaced); their first, unfinished attempt counts nowhere else.
        "episodes_rerun": stats.episodes_rerun,
    }
    results["observation"] = observation_label(env_cfg)
    results["config"] = config or {}
    results["provenance"] = provenance()
    if output_dir is not None:
        out = Path(output_dir)
        if videos_per_task:
            from vla_rl.io.video import save_video

            for idx, r in enumerate(records):
                if r.frames:
                    name = (
                        f"{r.spec.task.name}_init{r.spec.init_id}_{'ok' if r.success else 'fail'}"
                    )
                    save_video(out / "videos" / f"{name}.mp4", r.frames)
                    results["episodes"][idx]["video"] = f"videos/{name}.mp4"
        atomic_write_json(out / "results.json", results)
    return results


def curve_point(results: dict[str, Any]) -> dict[str, Any]:
    """What a learning-curve point keeps of an `evaluate` result: the success rate, its 95%
    interval and the per-task rates."""
    return {
        "success_rate": results["success_rate"],
        "ci95": results["success_ci95"],
        "per_task": {k: v["success_rate"] for k, v in results["per_task"].items()},
    }


def format_table(results: dict[str, Any]) -> str:
    """The per-task table with 95% Wilson intervals and the overall mean."""
    rows = [("task", "success", "95% CI", "episodes")]
    for name, e in results["per_task"].items():
        lo, hi = e["ci95"]
        rows.append((name, f"{e['success_rate']:.3f}", f"[{lo:.3f}, {hi:.3f}]", str(e["episodes"])))
    lo, hi = results["success_ci95"]
    rows.append(("mean over tasks", f"{results['success_rate']:.3f}", f"[{lo:.3f}, {hi:.3f}]",
                 str(results["num_episodes"])))  # fmt: skip
    return "\n".join(text_table(rows))


def text_table(rows: list[tuple[str, ...]]) -> list[str]:
    """The lines of a per-task table: the first column left-aligned, the others right-aligned,
    a rule under the header (rows[0]) and one above the last row (the overall line)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(row, widths))).rstrip())  # fmt: skip
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return lines
