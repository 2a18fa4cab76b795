"""ResFiT: off-policy residual RL on a frozen base. config (ResidualConfig), learner (critics,
targets, updates), transitions (n-step rows, demos), train (the loop), policy (ResidualPolicy),
base_action_queue (the env-side queue of base actions)."""
