"""Policy adapters implementing `vla_rl.policy.BasePolicy` (installed as vla_rl.policies)."""
