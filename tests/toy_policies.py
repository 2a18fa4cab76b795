"""Tiny policies for engine tests."""

from __future__ import annotations

import torch

from vla_rl.core.policy import BasePolicy
from vla_rl.core.types import ActionSample


class GreedyToyPolicy(BasePolicy):
    """Moves toward the target at full speed (succeeds), plus optional noise."""

    policy_type = "greedy_toy"

    def __init__(self, chunk_size: int = 1, noise: float = 0.0):
        super().__init__()
        self.chunk_size = chunk_size
        self.noise = noise

    def sample_actions(self, obs, deterministic=False):
        state = torch.as_tensor(obs["state"])
        direction = torch.sign(state[:, 1] - state[:, 0])[:, None, None]
        actions = direction.expand(-1, self.chunk_size, 1).clone()
        if self.noise and not deterministic:
            actions = actions + self.noise * torch.randn_like(actions)
        return ActionSample(
            actions=actions,
            log_prob=torch.zeros(len(state)),
            extras={"direction": direction[:, 0, 0]},
        )
