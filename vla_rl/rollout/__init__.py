"""Running episodes: the rollout engine, chunk execution, and the SlotEnv implementations (a
process pool of simulators, a batched in-process env)."""
