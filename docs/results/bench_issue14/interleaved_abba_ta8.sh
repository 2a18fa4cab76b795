#!/usr/bin/env bash
# Ta = 8, longer windows, ABBA order: before/after alternate which goes first.
set -e
for round in 1 2 3 4; do
  if [ $((round % 2)) -eq 1 ]; then order="before after"; else order="after before"; fi
  for side in $order; do
    ( cd /tmp/$side/repo && . .venv/bin/activate && vla-rl bench --steps 24000 --repeats 1 --chunk-size 8 --output /tmp/bench/L_${side}_ta8_r${round}.json > /tmp/bench/L_${side}_ta8_r${round}.log 2>&1 )
    echo "$side r$round done"
  done
done
