#!/bin/bash
# LIBERO end to end (issue 17): 5 expert demonstrations per libero_spatial task in the privileged
# object state, the state base cloned from them, its eval, and the scripted experts on the eval
# split of libero_spatial, libero_object and libero_goal (the goal tasks they cover).
# Usage: bash docs/results/libero_issue17/run.sh OUT   (OUT: a fresh directory)
set -euo pipefail
OUT=${1:?usage: run.sh OUT}
export HF_HUB_OFFLINE=1
step() { echo "== $(date -u +%T) $*"; }
step demonstrations
vla-rl collect --benchmark libero_spatial --episodes 5 --env.object-state \
    --output "$OUT/datasets/spatial-5demos-state" --no-progress
step behaviour cloning
vla-rl pretrain --dataset "$OUT/datasets/spatial-5demos-state" \
    --output-dir "$OUT/pretrain/libero-spatial-state" --steps 4000 --eval-every 4000 \
    --eval-episodes 2 --no-progress
step the base on the eval split
vla-rl eval --policy "$OUT/pretrain/libero-spatial-state/policy" --benchmark libero_spatial \
    --output-dir "$OUT/base_spatial" --no-progress
step experts
vla-rl eval --policy scripted --benchmark libero_spatial --output-dir "$OUT/scripted_spatial" --no-progress
vla-rl eval --policy scripted --benchmark libero_object --output-dir "$OUT/scripted_object" --no-progress
vla-rl eval --policy scripted --benchmark libero_goal --output-dir "$OUT/scripted_goal" --no-progress \
    --tasks open_the_middle_drawer_of_the_cabinet put_the_bowl_on_the_stove \
    put_the_wine_bottle_on_top_of_the_cabinet open_the_top_drawer_and_put_the_bowl_inside \
    put_the_bowl_on_top_of_the_cabinet put_the_cream_cheese_in_the_bowl turn_on_the_stove \
    put_the_bowl_on_the_plate put_the_wine_bottle_on_the_rack
step done
