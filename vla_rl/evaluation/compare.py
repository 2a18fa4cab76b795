"""Paired comparison of evaluation results (`vla-rl compare`).

Two results of the eval protocol on the same episodes (the same tasks, init states and episode
counts; with the per-episode noise streams of vla_rl.core.noise, the same noise too when their
eval seeds agree) are compared episode by episode: per task and overall, the difference in
success rate B - A, a paired 95% bootstrap interval (episodes resampled within each task, the
same draw for both), McNemar's exact test on the discordant episodes, and whether p < 0.05.
Results that were not measured the same way are refused with one line saying what differs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_rl.evaluation.protocol import text_table
from vla_rl.evaluation.stats import mcnemar_exact_p, paired_bootstrap_interval, wilson_interval

ALPHA = 0.05  # significance level of the McNemar test (two-sided), the field's usual 5%

# protocol fields two results must share to be compared, with what each means in the message
MUST_MATCH = {
    "benchmark": "benchmark",
    "split": "split",
    "deterministic": "decoding mode (deterministic)",
    "observation": "observation",
    "benchmark_version": "benchmark version",
}


class IncomparableError(ValueError):
    """Two results cannot be paired (one line saying what differs); the CLI exits 2."""


@dataclass
class Side:
    """One results file as compare reads it: its label, protocol block and episode outcomes."""

    label: str
    protocol: dict[str, Any]
    outcomes: dict[tuple[str, int, int], bool]  # (task, init id, occurrence) -> success
    tasks: list[str] = field(default_factory=list)


def read_side(results: dict[str, Any], label: str) -> Side:
    """A comparable view of one results dict (an eval results.json, a finetune run's
    results.json, or its "base" entry)."""
    if "protocol" not in results or "episodes" not in results:
        raise IncomparableError(
            f"{label}: no protocol block or per-episode outcomes (results written before "
            "`vla-rl compare` existed); evaluate it again with this version"
        )
    seen: Counter = Counter()
    outcomes: dict[tuple[str, int, int], bool] = {}
    tasks: list[str] = []
    for ep in results["episodes"]:
        at = (ep["task"], int(ep["init_id"]))
        outcomes[(*at, seen[at])] = bool(ep["success"])
        seen[at] += 1
        if ep["task"] not in tasks:
            tasks.append(ep["task"])
    return Side(label, results["protocol"], outcomes, tasks)


def sides_from_files(paths: list[str]) -> list[Side]:
    """The sides named on the command line: each results file, and before a finetune run's
    result its base (evaluated with the same protocol in the same run) when only one file is
    given."""
    import json

    sides = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"results file {path} does not exist")
        try:
            results = json.loads(Path(path).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise IncomparableError(f"{path} is not a results JSON file ({err})") from None
        if not isinstance(results, dict):
            raise IncomparableError(f"{path} is not a results JSON file (not an object)")
        if len(paths) == 1:
            if "base" not in results:
                raise IncomparableError(
                    f"{path} has no base results beside it; pass two or more results files"
                )
            sides.append(read_side(results["base"], f"{path} (base)"))
        sides.append(read_side(results, path))
    return sides


def check_comparable(a: Side, b: Side) -> None:
    """Refuse, with one line, results measured differently or on other episodes."""
    for key, what in MUST_MATCH.items():
        if a.protocol.get(key) != b.protocol.get(key):
            raise IncomparableError(
                f"{what} differs: {a.label} has {a.protocol.get(key)!r}, "
                f"{b.label} has {b.protocol.get(key)!r}"
            )
    if set(a.outcomes) != set(b.outcomes):
        only_a = sorted(set(a.outcomes) - set(b.outcomes))
        only_b = sorted(set(b.outcomes) - set(a.outcomes))
        first = (only_a or only_b)[0]
        raise IncomparableError(
            f"episode lists differ: {a.label} has {len(a.outcomes)} episodes, {b.label} "
            f"{len(b.outcomes)}; {len(only_a) + len(only_b)} are not in both (first: task "
            f"{first[0]!r} init {first[1]})"
        )


def _row(a: list[bool], b: list[bool], strata: list[str]) -> dict[str, Any]:
    n = len(a)
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    rate_a = _mean_over(a, strata)
    rate_b = _mean_over(b, strata)
    lo, hi = paired_bootstrap_interval(a, b, strata)
    p = mcnemar_exact_p(only_a, only_b)
    return {
        "episodes": n,
        "a": rate_a, "a_ci95": list(wilson_interval(sum(a), n)),
        "b": rate_b, "b_ci95": list(wilson_interval(sum(b), n)),
        "difference": rate_b - rate_a, "difference_ci95": [lo, hi],
        "only_a": only_a, "only_b": only_b, "mcnemar_p": p, "significant": p < ALPHA,
    }  # fmt: skip


def _mean_over(values: list[bool], strata: list[str]) -> float:
    """Mean over strata of each stratum's mean (the protocol's mean over tasks)."""
    by: dict[str, list[bool]] = {}
    for v, s in zip(values, strata):
        by.setdefault(s, []).append(v)
    return sum(sum(v) / len(v) for v in by.values()) / len(by)


def compare(a: Side, b: Side) -> dict[str, Any]:
    """The paired comparison of B against A, per task and overall (mean over tasks)."""
    check_comparable(a, b)
    keys = [k for task in a.tasks for k in a.outcomes if k[0] == task]
    per_task = {}
    for task in a.tasks:
        ks = [k for k in keys if k[0] == task]
        per_task[task] = _row([a.outcomes[k] for k in ks], [b.outcomes[k] for k in ks],
                              [task] * len(ks))  # fmt: skip
    overall = _row([a.outcomes[k] for k in keys], [b.outcomes[k] for k in keys],
                   [k[0] for k in keys])  # fmt: skip
    seeds = (a.protocol.get("seed"), b.protocol.get("seed"))
    return {
        "a": a.label, "b": b.label, "per_task": per_task, "overall": overall,
        "same_noise": seeds[0] == seeds[1],
        "protocol": {k: a.protocol.get(k) for k in MUST_MATCH},
        "alpha": ALPHA,
    }  # fmt: skip


def format_comparison(result: dict[str, Any]) -> str:
    """The per-task table of a comparison, the overall row last."""
    head = ("task", "A", "B", "B - A", "paired 95% CI", "A only", "B only", "McNemar p", "")
    rows = [head]
    items = list(result["per_task"].items()) + [("mean over tasks", result["overall"])]
    for name, r in items:
        lo, hi = r["difference_ci95"]
        rows.append((name, f"{r['a']:.3f}", f"{r['b']:.3f}", f"{r['difference']:+.3f}",
                     f"[{lo:+.3f}, {hi:+.3f}]", str(r["only_a"]), str(r["only_b"]),
                     f"{r['mcnemar_p']:.3g}", "*" if r["significant"] else ""))  # fmt: skip
    lines = [f"A = {result['a']}", f"B = {result['b']}", *text_table(rows)]
    note = f"* McNemar's exact test p < {result['alpha']} (two-sided)"
    if not result["same_noise"]:
        note += "; the eval seeds differ, so the noise does (the initial states are still paired)"
    lines.append(note)
    return "\n".join(lines)
