"""Per-RL-step training metrics of the ppo_diag runs, side by side (issue 15).

python docs/results/ppo_diag/summarize.py runs/ppo_diag
"""

import json
import sys
from pathlib import Path

KEYS = ("success_rate", "adv_abs_mean", "return_mean", "value_mean", "value_explained_var",
        "clip_fraction", "approx_kl", "entropy", "grad_norm", "samples")  # fmt: skip


def rows(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if "train/success_rate" in m:
            out.append({"env_steps": m["step"], **{k: m.get(f"train/{k}") for k in KEYS}})
    return out


def main(root: Path) -> None:
    summary = {}
    for run in sorted(p for p in root.iterdir() if (p / "metrics.jsonl").is_file()):
        steps = rows(run)
        summary[run.name] = steps
        print(f"\n{run.name}")
        print("env_steps " + " ".join(f"{k[:12]:>12}" for k in KEYS))
        for s in steps:
            cells = [f"{s[k]:12.4f}" if isinstance(s[k], float) else f"{'-':>12}" for k in KEYS]
            print(f"{s['env_steps']:9d} " + " ".join(cells))
    (root / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
