#!/usr/bin/env bash
# Issue 20: the local backend and the Ray backend with 1 and 2 workers give the same training
# on Meta-World: one GRPO step, and 200 residual env steps, with every default but the budget,
# then every tensor of each run's last checkpoint (weights, optimizer moments, RNG state and,
# for residual, the replay buffer: the transitions themselves) compared bit for bit.
# Usage: bash docs/results/issue20/equivalence.sh OUT [compare]   (compare: only compare OUT's runs)
set -euo pipefail
OUT=${1:?usage: equivalence.sh OUT}
mkdir -p "$OUT"
SHORT="--eval-episodes 2 --final-eval-episodes 2 --eval-every 1000000 --no-progress"
for BACKEND in local:2 ray:1 ray:2; do
  [[ ${2:-} == compare ]] && break
  NAME=${BACKEND%%:*}; W=${BACKEND##*:}
  # one GRPO step: 64 episodes (8 groups of 8) on the default task
  vla-rl finetune --method grpo --env-steps 1 $SHORT --env.backend "$NAME" \
    --grpo.rollout-workers "$W" --output-dir "$OUT/grpo_${NAME}_w$W"
  vla-rl finetune --method residual --env-steps 200 $SHORT --env.backend "$NAME" \
    --env.num-workers "$W" --output-dir "$OUT/residual_${NAME}_w$W"
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from safetensors.torch import load_file
out = Path(sys.argv[1]); report = {}
for method in ("grpo", "residual"):
    runs = sorted(out.glob(f"{method}_*"))
    # every tensor file of the checkpoint: weights, optimizer, RNG, episodes in progress, and
    # residual's replay buffer (online_buffer.safetensors), and the policy saved inside it
    files = sorted(p.relative_to(runs[0]) for p in (runs[0] / "checkpoint").rglob("*.safetensors"))
    for run in runs[1:]:
        row = {}
        for f in files:
            a, b = load_file(str(runs[0] / f)), load_file(str(run / f))
            row[str(f)] = {"tensors": len(a),
                           "identical": a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)}
        report[f"{runs[0].name} vs {run.name}"] = row
        print(f"{runs[0].name} vs {run.name}: " + ", ".join(
            f"{f} ({r['tensors']} tensors) identical: {r['identical']}" for f, r in row.items()))
(out / "equivalence.json").write_text(json.dumps(report, indent=1) + "\n")
PY
