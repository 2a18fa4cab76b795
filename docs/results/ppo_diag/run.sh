#!/usr/bin/env bash
# Why ppo stalls on door-open-v3 (issue 15): the same default ppo run on door-open-v3 and on the
# calibration task, 80k env steps each (half the budget), seed 0; the per-step metrics
# (advantage scale, clip fraction, approx-KL, value explained variance, train success) are in
# each run's metrics.jsonl.
#   bash docs/results/ppo_diag/run.sh runs/ppo_diag
set -euo pipefail
out=${1:-runs/ppo_diag}
for task in door-open-v3 button-press-topdown-v3; do
  vla-rl finetune --method ppo --tasks $task --env-steps 80000 --eval-every 40000 \
    --eval-episodes 20 --videos 0 --seed 0 --output-dir "$out/$task" --no-progress \
    > "$out.$task.log" 2>&1
done
