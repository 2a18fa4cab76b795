#!/usr/bin/env bash
# Issue 20's measurements: the cost of going distributed on this machine. Usage:
#   bash docs/results/issue20/run.sh OUT [STEP]    (STEP: ray_vs_local | scaling | async | all)
# Run on a quiet machine, one step at a time (each is a throughput measurement).
set -euo pipefail
OUT=${1:?usage: run.sh OUT [ray_vs_local|scaling|async|all]}
STEP=${2:-all}
mkdir -p "$OUT"
if [[ $STEP == ray_vs_local || $STEP == all ]]; then
  # 1. Meta-World, the engine's defaults (2 pipeline groups, 4 envs per worker), the bundled
  #    flow base doing the inference: local vs Ray with 1 and 2 workers, interleaved, 3 rounds.
  vla-rl bench-scale --benchmark metaworld --workers 1 2 --envs-per-worker 4 \
    --env.pipeline-groups 2 --env-steps 16000 --repeats 3 --output "$OUT/ray_vs_local_metaworld.json"
fi
if [[ $STEP == scaling || $STEP == all ]]; then
  # 2. The scaling table: a simulated step of 0.5 ms CPU (Meta-World's) and of 5 ms (a slower
  #    simulator), 1/2/4 workers x 1/4/16 envs per worker, both backends, one pipeline group so
  #    the time split adds up, 2 rounds (at 5 ms, 100-step episodes: a wave of 64 envs is
  #    6400 env steps, 16 s of CPU on 2 cores).
  vla-rl bench-scale --step-ms 0.5 --env-steps 8000 --repeats 2 \
    --output "$OUT/scaling_step0.5ms.json"
  vla-rl bench-scale --step-ms 5 --env-steps 2000 --max-steps 100 --repeats 2 \
    --output "$OUT/scaling_step5ms.json"
fi
if [[ $STEP == async || $STEP == all ]]; then
  # 3. The engine beside gymnasium's AsyncVectorEnv (and the raw simulator, a plain loop) on
  #    the same task, horizon and policy, at equal cores: 8 envs, 2 workers, closed loop (Ta = 1)
  #    and chunked (Ta = 8).
  for TA in 1 8; do
    vla-rl bench --env.num-envs 8 --env.num-workers 2 --chunk-size "$TA" --steps 16000 \
      --repeats 3 --output "$OUT/bench_async_ta${TA}.json"
  done
fi
