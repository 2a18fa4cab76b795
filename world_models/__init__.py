"""Learned simulators exposed as benchmarks (vla_rl.world_models).

A world model will implement the same `Benchmark` interface as Meta-World and LIBERO: `reset`
from stored real frames, `step` on action chunks, reward and termination from a reflector head,
so every method trains in it unchanged. Nothing is registered yet (see the World-Env issue).
"""
