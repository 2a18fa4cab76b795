#!/usr/bin/env bash
# srpo on MT10, one RL step (80 rollouts, a group of 8 per task), before and after rollouts kept
# only the frames SRPO's encoder samples (frames_per=16, drawn from render snapshots), ABBA.
# usage: abba.sh BEFORE AFTER OUT  (BEFORE/AFTER: clones at the two commits, each with its own
# .venv from the README's install; the editable install maps vla_rl to its own clone)
set -euo pipefail
before=$1 after=$2 out=$3
mkdir -p "$out"
rm -f "$out/walls.jsonl"
export HF_HUB_OFFLINE=1
run() {  # $1 = label, $2 = checkout, $3 = round
  local dir="$out/$1-$3"
  rm -rf "$dir"
  local t0
  t0=$(date +%s.%N)
  "$2/.venv/bin/vla-rl" finetune --method srpo --tasks MT10 --env-steps 20000 --eval-episodes 1 \
    --final-eval-episodes 1 \
    --videos 0 --seed 0 --no-progress --output-dir "$dir" > "$dir.log" 2>&1
  echo "{\"label\": \"$1\", \"round\": $3, \"start\": $t0, \"end\": $(date +%s.%N), \"commit\": \"$(git -C "$2" describe --always --dirty)\"}" >> "$out/walls.jsonl"
}
run before "$before" 1
run after "$after" 1
run after "$after" 2
run before "$before" 2
"$after/.venv/bin/python" - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
walls = [json.loads(line) for line in open(out / "walls.jsonl")]
rows, first = [], {}
for w in walls:
    metrics = [json.loads(line) for line in open(out / f"{w['label']}-{w['round']}" / "metrics.jsonl")]
    (step,) = [m for m in metrics if "train/rollout_s" in m]
    same = {k: v for k, v in step.items() if k.split("/")[-1] in
            ("mean_reward", "failure_reward", "policy_loss", "success_rate", "groups_kept")}
    first.setdefault("reference", same)
    w["wall_s"] = round(w.pop("end") - w.pop("start"), 1)
    rows.append(dict(w, rollout_s=round(step["train/rollout_s"], 2),
                     reward_s=round(step["train/reward_s"], 2),
                     update_s=round(step["train/update_s"], 2),
                     same_step_as_first_run=same == first["reference"]))
json.dump(rows, open(out / "abba.json", "w"), indent=1)
for r in rows:
    print(r)
PY
