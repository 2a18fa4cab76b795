"""Policy adapters implementing `vla_rl.core.policy.BasePolicy` (installed as vla_rl.policies)."""
