"""The same question over whole srpo runs: each RL step logs, per kind of reference, the mean
over tasks of the Spearman correlation between the failures' progress reward and Meta-World's
shaped reward at their last step (`train/failure_env_spearman_{batch,demos}`, with the number
of tasks it averaged in `..._tasks`). Pooled here over every step of every run, weighted by
those task counts, first and second half of each run apart.

    python docs/results/srpo_failure_order/in_runs.py runs/mt10/srpo-s1 runs/mt10/srpo-s2 \
        --output docs/results/srpo_failure_order/in_runs.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vla_rl.evaluation.stats import seed_interval
from vla_rl.io.atomic import atomic_write_json
from vla_rl.io.provenance import provenance

KINDS = ("batch", "demos")


def pooled(rows: list[dict]) -> dict[str, dict[str, float | int]]:
    """Per kind: the task-weighted mean of the per-step means, how many (step, task) pairs it
    rests on, and a 95% Student-t interval over the per-step means (unweighted: a rough guide
    to the noise, each step's mean being over 1-7 tasks of 1-8 failures)."""
    out = {}
    for kind in KINDS:
        key = f"train/failure_env_spearman_{kind}"
        pairs = [(r[key], r[f"{key}_tasks"]) for r in rows if key in r]
        n = sum(w for _, w in pairs)
        mean = round(sum(v * w for v, w in pairs) / n, 3) if n else None
        ci = None
        if len(pairs) > 1:
            ci = [round(x, 3) for x in seed_interval([v for v, _ in pairs])]
        out[kind] = {"task_steps": int(n), "steps": len(pairs), "spearman": mean,
                     "step_mean_ci95": ci}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--output", default="srpo_failure_order_in_runs.json")
    args = parser.parse_args()
    result: dict = {"runs": {}}
    every: list[dict] = []
    for run in args.runs:
        lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
        rows = [r for r in map(json.loads, lines) if "train/success_rate" in r]
        half = len(rows) // 2
        result["runs"][run] = {"rl_steps": len(rows), "all": pooled(rows),
                               "first_half": pooled(rows[:half]),
                               "second_half": pooled(rows[half:])}  # fmt: skip
        every += rows
    result["all_runs"] = pooled(every)
    result["provenance"] = provenance()
    atomic_write_json(args.output, result)
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=1))


if __name__ == "__main__":
    main()
