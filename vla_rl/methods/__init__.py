"""Post-training methods, one file each (residual, ppo, grpo, srpo, ...), registered in
`vla_rl.registry.METHODS`. Each file holds a `<Name>Config` dataclass whose every field cites
its default's source, a `<Name>` class with `update(batch) -> dict[str, float]`, and a
`train(cfg)` loop that reads top to bottom. None has landed yet."""
