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
# The reduction test: the same default ppo on door-open-v3 at the 160k env steps, with the
# chunk's log-prob parts summed into one ratio (the default) and averaged (--ppo.reduction mean).
for reduction in sum mean; do
  vla-rl finetune --method ppo --tasks door-open-v3 --env-steps 160000 --eval-every 80000 \
    --eval-episodes 20 --videos 0 --seed 0 --ppo.reduction $reduction \
    --output-dir "$out/door-open-v3-160k-$reduction" --no-progress > "$out.160k-$reduction.log" 2>&1
done
