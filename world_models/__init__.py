"""Learned simulators exposed as benchmarks (vla_rl.world_models).

A world model will be a `Benchmark` whose `make_env` returns a batched in-process SlotEnv (a
`vla_rl.rollout.batched.BatchedSlotEnv` subclass: one forward pass steps every slot), that resets
from stored real frames, steps on action chunks, and gives reward and termination from a
reflector head (a RewardModel in the REWARDS registry), so every method trains in it unchanged.
Nothing is registered yet (see the World-Env issue).
"""
