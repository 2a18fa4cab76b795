#!/usr/bin/env bash
# SRPO with demonstration references vs without, on the four MT10 tasks the bundled base starts
# at 0-6% on (one policy on the four, seed 0, every default but the budget, the eval schedule
# and 20 final eval episodes per task).
#   bash docs/results/srpo_refs/run.sh runs/srpo_refs
set -euo pipefail
out=${1:-runs/srpo_refs}
tasks="reach-v3 push-v3 pick-place-v3 peg-insert-side-v3"
for refs in auto none; do
  vla-rl finetune --method srpo --tasks $tasks --env-steps 240000 --eval-every 120000 \
    --eval-episodes 10 --final-eval-episodes 20 --videos 0 --seed 0 \
    --srpo.progress.references $refs \
    --output-dir "$out/$refs" --overwrite --no-progress > "$out.$refs.log" 2>&1
done
