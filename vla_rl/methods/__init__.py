"""RL methods, one file (or folder) each; `vla_rl.core.registry.METHODS` maps `--method` names
to their `train(run_cfg, method_cfg)`."""
