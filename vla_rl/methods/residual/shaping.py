"""Dense rewards for `--method residual`: a frozen progress critic's potential-based shaping
(`--residual.reward critic --residual.critic DIR`), or the simulator's own dense reward as the
potential (`--residual.reward dense_oracle`, a privileged reference), on top of the sparse
success reward (issue 18, item 4).

The same shaping as the on-policy methods' (vla_rl/rewards/critic_reward.py), per control step:
    r'_t = r_t + lam * (gamma * Phi(o_t+1) - Phi(o_t)),
Phi(o_0) = 0, the state after success absorbing (potential 0), gamma the residual's own
discount, so the n-step targets see a dense signal and the optimal policy is unchanged (Ng et
al. 1999). A whole episode is scored when it ends, in one batched critic call: the residual's
transitions enter the replay buffer only then anyway (`SlotEpisodes`).

The demonstrations are shaped the same way (their frames rendered while the scripted experts
run): a critic fitted on a mix of shaped and unshaped targets would learn neither Q nor
Q - Phi. Shapes: L control steps of an episode, H, W frame size.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch

from vla_rl.core.config import ConfigError
from vla_rl.rewards.critic_reward import (
    CriticRewardConfig,
    batch_auc,
    check_critic_reward,
    load_critic,
    potential_bonus,
)

REWARDS = ("success", "critic", "dense_oracle")
AUC_WINDOW = 64
"""Finished episodes over which the critic's success-vs-failure ROC-AUC is logged (the on-policy
methods use one batch, 64-80 episodes: the same order)."""


def check_shaping(reward: str, critic: str | None, shaping: CriticRewardConfig) -> None:
    """ConfigError (one line) for a reward nothing can run with; before anything is written."""
    if reward not in REWARDS:
        raise ConfigError(f"--residual.reward {reward!r} is not one of: {', '.join(REWARDS)}")
    if reward == "critic":
        check_critic_reward(critic, shaping, "residual")
    elif shaping.weight < 0:
        raise ConfigError("--residual.shaping.weight must be >= 0")
    if shaping.mode != "potential" and reward != "success":
        # VLAC's raw delta needs the pair of consecutive frames only, but its sum does not
        # telescope, and an off-policy learner replays it for ever: not offered here
        raise ConfigError(
            f"--residual.shaping.mode {shaping.mode!r}: the residual method shapes with "
            "potential only (valid choices: potential)"
        )


def episode_bonus(phi: np.ndarray, terminated: bool, gamma: float) -> np.ndarray:
    """gamma * Phi(o_t+1) - Phi(o_t) for the L steps of one episode; phi (L + 1,) the potential
    of the frame before each step and after the last (absorbing, 0, when it terminated)."""
    length = len(phi) - 1
    steps = torch.ones(length, 1, dtype=torch.bool)
    done = torch.zeros(length, 1, dtype=torch.bool)
    done[-1] = terminated
    bonus = potential_bonus(torch.as_tensor(phi, dtype=torch.float32)[:, None], steps, done, gamma)
    return bonus[:, 0].numpy()


class Shaping:
    """The residual's reward beyond sparse success: `bonus` per finished episode, and the
    critic's view beside the truth in `metrics` (its final-progress score of successes and
    failures over the last AUC_WINDOW episodes, their ROC-AUC, and `alarm` below alarm_auc)."""

    def __init__(self, reward: str, cfg: CriticRewardConfig, gamma: float, critic: Any = None):
        self.reward, self.cfg, self.gamma, self.critic = reward, cfg, gamma, critic
        self.frame_size = int(getattr(critic, "image_size", 64)) if reward == "critic" else 0
        """H = W of the frames to render per env step (0: none needed)."""
        self.recent: deque[tuple[float, bool, float]] = deque(maxlen=AUC_WINDOW)
        """(final potential, success, summed bonus) of the last online episodes."""

    @classmethod
    def build(cls, reward: str, critic: str | None, cfg: CriticRewardConfig,
              gamma: float) -> Shaping | None:  # fmt: skip
        """None for sparse success (nothing to add); the critic is loaded here, so a directory
        of the wrong kind fails before the run writes anything. The settings were checked
        with the rest of the config (`check_residual_config` calls `check_shaping`)."""
        if reward == "success":
            return None
        if reward == "dense_oracle":
            return cls(reward, cfg, gamma)
        return cls(
            reward, cfg, gamma, load_critic(critic, cfg.batch_size, flag="--residual.critic")
        )

    def potential(
        self, frames: list[np.ndarray] | None, env_rewards: np.ndarray, instruction: str
    ) -> np.ndarray:
        """Phi (L + 1,) of one episode: the critic's anchored progress of its L + 1 frames, or
        (dense_oracle) the env reward of each step / oracle_scale, clipped to [0, 1]."""
        if self.reward == "critic":
            if frames is None or len(frames) != len(env_rewards) + 1:
                raise ValueError(
                    f"the critic reward needs a frame before every step and after the last "
                    f"({len(env_rewards) + 1}), got {0 if frames is None else len(frames)}"
                )
            return self.critic.progress(np.stack(frames), instruction, "anchored").numpy()
        phi = np.zeros(len(env_rewards) + 1, dtype=np.float32)
        phi[1:] = np.clip(np.asarray(env_rewards) / self.cfg.oracle_scale, 0.0, 1.0)
        return phi

    def bonus(
        self,
        frames: list[np.ndarray] | None,
        env_rewards: np.ndarray,
        terminated: bool,
        success: bool,
        instruction: str,
        log: bool = True,
    ) -> np.ndarray:
        """lam * (gamma Phi(o_t+1) - Phi(o_t)) per step (L,) of one finished episode; `log`
        counts it in `metrics` (online episodes; not the demonstrations)."""
        phi = self.potential(frames, env_rewards, instruction)
        bonus = self.cfg.weight * episode_bonus(phi, terminated, self.gamma)
        if log:
            self.recent.append((float(phi[-1]), bool(success), float(bonus.sum())))
        return bonus.astype(np.float32)

    @property
    def metrics(self) -> dict[str, float]:
        """Logged beside the episodes' success (train/...)."""
        if not self.recent:
            return {}
        score, success, bonus = (np.array(column) for column in zip(*self.recent))
        prefix = "critic" if self.reward == "critic" else "oracle"
        out = {f"{prefix}/bonus_per_episode": float(bonus.mean())}
        if self.reward != "critic":
            return out
        for name, rows in (("success", score[success]), ("failure", score[~success])):
            if len(rows):
                out[f"critic/score_{name}"] = float(rows.mean())
        auc = batch_auc(score, success)
        if auc is not None:
            out["critic/auc"] = auc
            out["critic/alarm"] = float(auc < self.cfg.alarm_auc)
        return out
