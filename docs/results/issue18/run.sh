#!/usr/bin/env bash
# Issue 18's measurements on Meta-World: a pairwise progress critic fitted here, its held-out
# quality, and what it does as grpo's reward. Usage: bash docs/results/issue18/run.sh OUT [STEP]
# (STEP: data | fit | quality | rl | all; default all)
set -euo pipefail
OUT=${1:?usage: run.sh OUT [data|fit|quality|rl|all]}
STEP=${2:-all}
TASKS="reach-v3 door-open-v3 drawer-open-v3"
mkdir -p "$OUT"
if [[ $STEP == data || $STEP == all ]]; then
  # 1. Images of the corner camera at 64 px (the critic's input side): the scripted experts'
  #    demonstrations (10 train initial states per task) and the bundled flow base's rollouts
  #    with action noise 0.1 (20 train initial states per task, failures kept).
  vla-rl collect --output "$OUT/data/demos" --tasks $TASKS --episodes 10 \
    --env.images --env.image-size 64 --no-progress
  vla-rl collect --policy metaworld-flow --output "$OUT/data/rollouts" --tasks $TASKS \
    --episodes 20 --action-noise 0.1 --no-successes-only --env.images --env.image-size 64 \
    --no-progress
fi
if [[ $STEP == fit || $STEP == all ]]; then
  # 2. The critic, every default (held out: 20% of each task's initial states).
  vla-rl fit-critic --datasets "$OUT/data/demos" "$OUT/data/rollouts" --output-dir "$OUT/fit" \
    --no-progress
fi
if [[ $STEP == quality || $STEP == all ]]; then
  # 3. Its quality on the fit's held-out episodes only, and its cost per pair.
  vla-rl critic-quality --critic "$OUT/fit/critic" --datasets "$OUT/data/demos" \
    "$OUT/data/rollouts" --fit "$OUT/fit/fit.json" --output "$OUT/quality/quality.json"
fi
if [[ $STEP == rl || $STEP == all ]]; then
  # 4. grpo on reach-v3 (the base: 0.06; sparse success barely moves it) with sparse success,
  #    with the critic's shaping, and with Meta-World's dense reward as the potential (oracle),
  #    three seeds each, each final evaluation paired with its base.
  for reward in success critic dense_oracle; do
    vla-rl finetune --method grpo --tasks reach-v3 --env-steps 160000 --eval-every 40000 \
      --eval-episodes 20 --videos 0 --seeds 0 1 2 --no-progress --grpo.reward $reward \
      --grpo.critic "$OUT/fit/critic" --output-dir "$OUT/rl/grpo_reach_$reward"
  done
fi
