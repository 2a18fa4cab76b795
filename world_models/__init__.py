"""Learned simulators exposed as benchmarks (vla_rl.world_models).

`worldmodel` (BENCHMARKS; `--benchmark worldmodel --env.world-model DIR`) is a `Benchmark`
whose `make_env` returns a batched in-process SlotEnv (`env.WorldModelEnv`, a
`vla_rl.rollout.batched.BatchedSlotEnv`: one forward pass steps every slot), that resets from
stored real frames, steps on action chunks, and gives reward and termination from a reflector
head, so every method trains in it unchanged.

    video_model.py  the model: EDM denoiser on diffusers' UNet2DModel, sampler, state head,
                    reflector; save / load (safetensors + config.json)
    data.py         LeRobot datasets -> episodes, the training window sampler, reflector labels
    train.py        the training step and state (`vla-rl world-model train` runs the loop)
    evaluate.py     open-loop error vs copy-last, action-shuffle gap, reflector ROC-AUC
    env.py          WorldModelBenchmark and WorldModelEnv
"""
