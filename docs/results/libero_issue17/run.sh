#!/bin/bash
# LIBERO end to end (issue 17): the scripted experts on the eval split, 5 demonstrations per
# libero_spatial task in the privileged object state, the state base cloned from them, and its
# eval. Usage: bash docs/results/libero_issue17/run.sh OUT   (OUT: a fresh directory)
set -euo pipefail
OUT=${1:?usage: run.sh OUT}
export HF_HUB_OFFLINE=1
step() { echo "== $(date -u +%T) $*"; }
step experts on libero_spatial
vla-rl eval --policy scripted --benchmark libero_spatial --output-dir "$OUT/scripted_spatial" --no-progress
step experts on libero_object
vla-rl eval --policy scripted --benchmark libero_object --output-dir "$OUT/scripted_object" --no-progress
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
step done
