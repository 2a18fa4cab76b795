"""The contract every other part builds on: data types, the policy, benchmark, env-slot and
reward interfaces, the registries, config parsing. Imports nothing of vla-rl but vla_rl.io."""
