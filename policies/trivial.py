"""Trivial policies: for throughput measurements and as sanity baselines (success ~0)."""

from __future__ import annotations

from typing import Any

import torch

from vla_rl.core import noise
from vla_rl.core.policy import BasePolicy
from vla_rl.core.types import ActionSample, Observation, obs_batch_size


class ZeroPolicy(BasePolicy):
    """Always the benchmark's no-op action (zeros; LIBERO keeps the gripper open with -1)."""

    policy_type = "zero"

    def __init__(self, noop_action: list[float], chunk_size: int = 1):
        super().__init__()
        self.noop_action = list(noop_action)
        self.chunk_size = chunk_size
        self.register_buffer("_noop", torch.tensor(self.noop_action, dtype=torch.float32))

    @classmethod
    def for_benchmark(cls, benchmark: Any, chunk_size: int = 1) -> ZeroPolicy:
        if benchmark is None:
            raise ValueError("the zero policy needs a benchmark to know the action size")
        return cls(benchmark.noop_action, chunk_size)

    def get_config(self) -> dict[str, Any]:
        return {"noop_action": self.noop_action, "chunk_size": self.chunk_size}

    def sample_actions(self, obs: Observation, deterministic: bool = False) -> ActionSample:
        b = obs_batch_size(obs)
        return ActionSample(actions=self._noop.expand(b, self.chunk_size, -1).clone())


class RandomPolicy(BasePolicy):
    """Uniform actions in [-1, 1]^Da; its log-prob is exact, which makes it a tiny test policy."""

    policy_type = "random"

    def __init__(self, action_dim: int, chunk_size: int = 1):
        super().__init__()
        self.action_dim = action_dim
        self.chunk_size = chunk_size

    @classmethod
    def for_benchmark(cls, benchmark: Any, chunk_size: int = 1) -> RandomPolicy:
        if benchmark is None:
            raise ValueError("the random policy needs a benchmark to know the action size")
        return cls(benchmark.action_dim, chunk_size)

    def get_config(self) -> dict[str, Any]:
        return {"action_dim": self.action_dim, "chunk_size": self.chunk_size}

    def sample_actions(self, obs: Observation, deterministic: bool = False) -> ActionSample:
        b = obs_batch_size(obs)
        shape = (b, self.chunk_size, self.action_dim)
        if deterministic:
            actions = torch.zeros(shape)
        else:  # each row's own stream (vla_rl.core.noise)
            actions = noise.uniform(noise.noise_keys(obs), b, shape[1:], "random") * 2 - 1
        return ActionSample(actions=actions, log_prob=self.log_prob(obs, ActionSample(actions)))

    def log_prob(self, obs: Observation, sample: ActionSample) -> torch.Tensor:
        # Uniform density 1/2 per dimension on [-1, 1]: log p = -Ta * Da * log 2 for every chunk.
        n = sample.actions.shape[1] * sample.actions.shape[2]
        return torch.full((sample.actions.shape[0],), -n * torch.log(torch.tensor(2.0)).item())
