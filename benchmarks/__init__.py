"""Benchmark adapters implementing `vla_rl.core.benchmark.Benchmark` (installed as
vla_rl.benchmarks). Importing one imports its simulator, so the registry imports them lazily."""
