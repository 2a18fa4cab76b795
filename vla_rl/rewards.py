"""Reward models: trajectories -> (T, B) rewards; plain callables combined with weights (as TRL).

Sparse success, SRPO progress, VLAC critics and world-model reflectors all fit this interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from vla_rl.trajectories import Trajectories


class RewardModel(Protocol):
    def __call__(self, traj: Trajectories) -> torch.Tensor:
        """Rewards (T, B) for every decision step; zero on invalid (padded) steps."""
        ...


class SparseSuccessReward:
    """1 at the decision step where an episode succeeded, 0 elsewhere (the VLA-RL default)."""

    def __call__(self, traj: Trajectories) -> torch.Tensor:
        return traj.terminated.float() * traj.success.float()[None] * traj.valid.float()


class WeightedRewards:
    """sum_i w_i * r_i(traj) over named reward models."""

    def __init__(self, models: Sequence[RewardModel], weights: Sequence[float]):
        if len(models) != len(weights):
            raise ValueError(f"{len(models)} reward models but {len(weights)} weights")
        self.models = list(models)
        self.weights = list(weights)

    def __call__(self, traj: Trajectories) -> torch.Tensor:
        total = torch.zeros(traj.valid.shape)
        for model, weight in zip(self.models, self.weights):
            total = total + weight * model(traj)
        return total * traj.valid.float()
