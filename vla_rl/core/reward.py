"""Reward models: trajectories -> (T, B) rewards; plain callables combined with weights (as TRL).

Sparse success, SRPO progress, VLAC critics and world-model reflectors all fit this interface.
A method holds one `WeightedRewards` built from its `--<method>.reward` names (the REWARDS
registry) and `--<method>.reward-weights`; PPO turns the (T, B) rewards into GAE advantages,
GRPO sums them over time into one score per rollout. A reward that scores whole trajectories
(SRPO's progress) puts its score on the episode's last decision step (`at_last_step`), so both
readings agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from vla_rl.core.config import ConfigError
from vla_rl.core.registry import REWARDS
from vla_rl.core.trajectories import Trajectories


@runtime_checkable
class RewardModel(Protocol):
    frame_size: int
    """H = W of the rendered video frames it reads from `traj.frames` (one per decision step,
    plus the first); 0 when it reads none (the rollout then renders nothing). A model may also
    set `frames_sampled` = F > 0: it reads only the F of those frames that
    vla_rl.rollout.frames.uniform_indices samples, so the rollout keeps (and where it can,
    renders) only those (SRPO's encoder, 16 of about 60 on Meta-World)."""

    def __call__(self, traj: Trajectories) -> torch.Tensor:
        """Rewards (T, B) for every decision step; zero on invalid (padded) steps."""
        ...


@dataclass
class RewardContext:
    """What a reward model may need beyond the trajectories, given once before the first
    rollout to those with a `prepare(context)` method (SRPO's demonstration references)."""

    benchmark: Any  # the run's Benchmark
    tasks: list[Any]  # the TaskSpecs trained on (train split)
    env: Any  # the run's EnvConfig


def at_last_step(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-trajectory scores (B,) as (T, B) rewards: score b at episode b's last valid step,
    0 elsewhere. valid (T, B) bool, every episode at least one valid step."""
    last = valid.sum(0) - 1  # (B,)
    rewards = torch.zeros(valid.shape, dtype=scores.dtype)
    rewards[last, torch.arange(valid.shape[1])] = scores
    return rewards


class SparseSuccessReward:
    """1 at the decision step where an episode succeeded, 0 elsewhere (the VLA-RL default)."""

    frame_size = 0
    metrics: dict[str, float] = {}

    @classmethod
    def build(cls, method_cfg: Any = None, policy: Any = None) -> SparseSuccessReward:
        return cls()

    def __call__(self, traj: Trajectories) -> torch.Tensor:
        return traj.terminated.float() * traj.success.float()[None] * traj.valid.float()


class WeightedRewards:
    """sum_i w_i * r_i(traj) over named reward models.

    metrics: after each call, every model's own metrics (its `metrics` dict, if it has one),
    prefixed with its name when there is more than one model.
    """

    def __init__(
        self,
        models: Sequence[RewardModel],
        weights: Sequence[float],
        names: Sequence[str] | None = None,
    ):
        if len(models) != len(weights):
            raise ValueError(f"{len(models)} reward models but {len(weights)} weights")
        self.models = list(models)
        self.weights = list(weights)
        self.names = list(names) if names is not None else [f"r{i}" for i in range(len(models))]
        self.metrics: dict[str, float] = {}

    @property
    def frame_size(self) -> int:
        """The largest frame size any model reads (0: none reads frames)."""
        return max((m.frame_size for m in self.models), default=0)

    @property
    def frames_sampled(self) -> int:
        """F when every model that reads frames reads only the F sampled ones; 0 (every frame)
        when any reads them all or two sample different numbers."""
        counts = {getattr(m, "frames_sampled", 0) for m in self.models if m.frame_size}
        return counts.pop() if len(counts) == 1 else 0

    def prepare(self, context: RewardContext) -> None:
        """Hand `context` to every model that takes one (before the first rollout)."""
        for model in self.models:
            if hasattr(model, "prepare"):
                model.prepare(context)

    def __call__(self, traj: Trajectories) -> torch.Tensor:
        total = torch.zeros(traj.valid.shape)
        self.metrics = {}
        for name, model, weight in zip(self.names, self.models, self.weights):
            total = total + weight * model(traj)
            prefix = f"{name}/" if len(self.models) > 1 else ""
            for key, value in getattr(model, "metrics", {}).items():
                self.metrics[prefix + key] = value
        return total * traj.valid.float()


def check_reward_names(names: Sequence[str], weights: Sequence[float], flag: str) -> None:
    """Every name registered, and one weight per name (or none: all 1). Raises before a run."""
    if not names:
        raise ConfigError(f"--{flag}.reward needs at least one reward; valid: {REWARDS.names()}")
    for name in names:
        REWARDS.get(name)  # UnknownNameError lists the valid rewards
    if weights and len(weights) != len(names):
        raise ConfigError(
            f"--{flag}.reward-weights: {len(weights)} weights for {len(names)} rewards "
            f"({', '.join(names)}); give one per reward, or none for 1 each"
        )


def build_rewards(
    names: Sequence[str], weights: Sequence[float], method_cfg: Any, policy: Any
) -> WeightedRewards:
    """The method's reward: the named REWARDS entries, each built from the method's settings
    (`factory(method_cfg, policy)`), weighted (all 1 when `weights` is empty)."""
    weights = list(weights) or [1.0] * len(names)
    models = [REWARDS.get(name)(method_cfg, policy) for name in names]
    return WeightedRewards(models, weights, names)
