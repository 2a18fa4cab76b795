#!/usr/bin/env bash
# Issue 21's measurements: batch-independent episodes on Meta-World, the README main job over
# three seeds, and the paired comparisons. Usage: bash docs/results/issue21/run.sh OUT
set -euo pipefail
OUT=${1:?usage: run.sh OUT}
mkdir -p "$OUT"
# 1. The bundled flow base, deterministic (its ODE starts from keyed noise), 1 env vs 8 envs on
#    the 500 MT10 eval episodes: every episode must agree.
vla-rl eval --policy metaworld-flow --env.num-envs 1 --env.num-workers 1 --output-dir "$OUT/flow_1env"
vla-rl eval --policy metaworld-flow --env.num-envs 8 --env.num-workers 2 --output-dir "$OUT/flow_8env"
vla-rl compare "$OUT/flow_1env/results.json" "$OUT/flow_8env/results.json" --output "$OUT/flow_1v8.json"
# 2. The README main job (every default) with three seeds.
vla-rl finetune --seeds 0 1 2 --output-dir "$OUT/main_seeds" --no-progress
# 3. Paired: each seed's result against its base (same episodes, same noise).
for s in 0 1 2; do
  vla-rl compare "$OUT/main_seeds/seed-$s/results.json" --output "$OUT/main_seed${s}_vs_base.json" --plot "$OUT/main_seed${s}_vs_base.png"
done
# 4. The on-policy methods' headline runs (button-press-topdown-v3, 160k env steps) with three seeds.
for method in grpo ppo; do
  vla-rl finetune --method $method --tasks button-press-topdown-v3 --env-steps 160000 \
    --eval-every 20000 --eval-episodes 20 --videos 0 --seeds 0 1 2 --no-progress \
    --output-dir "$OUT/pg_bpt_$method"
done
# 5. srpo's headline run (EfficientNet-Lite0 progress reward) with three seeds, each paired with its base.
vla-rl finetune --method srpo --tasks button-press-topdown-v3 --env-steps 160000 \
  --eval-every 20000 --eval-episodes 20 --videos 0 --seeds 0 1 2 --no-progress \
  --output-dir "$OUT/pg_bpt_srpo"
for s in 0 1 2; do
  vla-rl compare "$OUT/pg_bpt_srpo/seed-$s/results.json" --output "$OUT/srpo_seed${s}_vs_base.json"
done
