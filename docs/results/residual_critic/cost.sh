#!/usr/bin/env bash
# The cost of a dense reward in residual RL: env steps/s with sparse success, with a progress
# critic's shaping (fit-critic's default architecture, 64 px frames rendered every env step;
# random weights: this measures what a critic costs, not what it teaches), and with the dense
# oracle; the same command otherwise, run interleaved A B C A B C.
# Usage: bash docs/results/residual_critic/cost.sh OUT
set -euo pipefail
OUT=${1:?output directory}
mkdir -p "$OUT"
TASK=button-press-topdown-v3
python - "$OUT/critic" "$TASK" <<'PY'
import sys
from vla_rl.core.benchmark import get_benchmark
from vla_rl.rewards.pairwise_critic import PairwiseProgressCritic
task = get_benchmark("metaworld").tasks("train", [sys.argv[2]])[0]
PairwiseProgressCritic([task.instruction], image_size=64).save(sys.argv[1])
PY
for round in 1 2; do
  for reward in success critic dense_oracle; do
    vla-rl finetune --method residual --tasks $TASK --env-steps 4000 --eval-every 100000 \
        --eval-episodes 1 --final-eval-episodes 5 --videos 0 --seed 0 --no-progress \
        --residual.reward $reward --residual.critic "$OUT/critic" \
        --output-dir "$OUT/$reward-r$round" > "$OUT/$reward-r$round.log" 2>&1
  done
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for f in sorted(out.glob("*-r*/results.json")):
    r = json.loads(f.read_text())
    name, rnd = f.parent.name.rsplit("-r", 1)
    rows.setdefault(name, {})[rnd] = round(r["env_steps"] / r["train_wall_s"], 1)
summary = {"env_steps_per_s": rows, "commit": r["provenance"]["git_commit"]}
for name in rows:
    summary.setdefault("ratio_to_success", {})[name] = {
        k: round(v / rows["success"][k], 3) for k, v in rows[name].items()}
print(json.dumps(summary, indent=1))
(out / "summary.json").write_text(json.dumps(summary, indent=1))
PY
