#!/bin/bash
# The LIBERO scripted experts on the first eval initial states of every task they cover.
# Usage: bash docs/results/libero_issue17/experts.sh OUT EPISODES_PER_TASK
set -euo pipefail
OUT=${1:?usage: experts.sh OUT EPISODES}; N=${2:?usage: experts.sh OUT EPISODES}
export HF_HUB_OFFLINE=1
common="--episodes $N --env.num-envs 2 --env.num-workers 1 --no-progress"
vla-rl eval --policy scripted --benchmark libero_spatial --output-dir "$OUT/scripted_spatial" $common
vla-rl eval --policy scripted --benchmark libero_object --output-dir "$OUT/scripted_object" $common
vla-rl eval --policy scripted --benchmark libero_goal --output-dir "$OUT/scripted_goal" $common \
    --tasks open_the_middle_drawer_of_the_cabinet put_the_bowl_on_the_stove \
    put_the_wine_bottle_on_top_of_the_cabinet open_the_top_drawer_and_put_the_bowl_inside \
    put_the_bowl_on_top_of_the_cabinet put_the_cream_cheese_in_the_bowl turn_on_the_stove \
    put_the_bowl_on_the_plate put_the_wine_bottle_on_the_rack
