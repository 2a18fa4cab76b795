"""RL methods, one file each; `vla_rl.registry.METHODS` maps `--method` names to their `train`."""
