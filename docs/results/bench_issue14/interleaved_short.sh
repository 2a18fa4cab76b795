#!/usr/bin/env bash
# Interleaved: before (554701a) and after (ec3e7b1) `vla-rl bench`, alternating, 3 rounds per setting.
set -e
for opts in "" "--chunk-size 8"; do
  tag=$( [ -z "$opts" ] && echo ta1 || echo ta8 )
  for round in 1 2 3; do
    for side in before after; do
      ( cd /tmp/$side/repo && . .venv/bin/activate && vla-rl bench --steps 8000 --repeats 1 $opts --output /tmp/bench/${side}_${tag}_r${round}.json > /tmp/bench/${side}_${tag}_r${round}.log 2>&1 )
      echo "$side $tag r$round done"
    done
  done
done
