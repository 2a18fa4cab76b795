"""`--method srpo`: GRPO with SRPO's self-referential progress reward (methods.md §1).

A preset, not a new algorithm: GRPO (vla_rl/methods/grpo.py) with `--grpo.reward srpo_progress`
(vla_rl/rewards/srpo_progress.py). A failed rollout scores by how close its embedded video
comes to the successful rollouts of the same task in the same batch: successes 1, failures in
(0, cap), ordered by distance. Rewards are grouped by task, advantages by initial state, as in
the released code. The embedding comes from a pluggable trajectory encoder
(vla_rl/rewards/encoders.py, `--srpo.progress.encoder`): EfficientNet-Lite0 with real ImageNet
weights by default, V-JEPA 2 (the paper's) from a local directory, or the policy's own features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vla_rl.methods.grpo import GRPO, GRPOConfig
from vla_rl.methods.on_policy import train_on_policy

# Flags of the SRPO settings before the reward slot existed (they lived on SRPOConfig itself and
# in its `reward` group); `vla-rl finetune` still takes them, as these new names.
LEGACY_FLAGS = {
    "--srpo.encoder": "--srpo.progress.encoder",
    "--srpo.encoder-path": "--srpo.progress.encoder-path",
    "--srpo.frames": "--srpo.progress.frames",
    "--srpo.frame-size": "--srpo.progress.frame-size",
    "--srpo.pooling": "--srpo.progress.pooling",
    "--srpo.reward.": "--srpo.progress.",  # a prefix: --srpo.reward.cap, .normalization, ...
}


@dataclass
class SRPOConfig(GRPOConfig):
    """GRPO's settings (same defaults) with SRPO's progress reward selected."""

    reward: tuple[str, ...] = ("srpo_progress",)
    """SRPO's reward: srpo_progress alone (it already gives successes 1). Settings under
    --srpo.progress.*; other reward models may be added with weights."""


class SRPO(GRPO):
    name = "srpo"


def train(cfg, pg: SRPOConfig) -> dict[str, Any]:
    return train_on_policy(cfg, pg, SRPO)
