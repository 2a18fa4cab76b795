"""A progress critic as an RL reward (`--<method>.reward critic --<method>.critic DIR`), from
../shared/reference/critics.md section 4.4.

Default: **potential-based shaping** (Ng, Harada and Russell 1999) of the sparse success reward,
    r'_t = r_t + lam * (gamma * Phi(o_t+1) - Phi(o_t)),
with Phi the critic's anchored progress of the frame after each decision step
(`ProgressCritic.progress(..., "anchored")`, Phi(o_0) = 0). A shaping term of this form changes
no optimal policy, so a wrong critic costs speed, not the optimum. Two details decide that:
* the state after success is absorbing, its potential 0: the success step gets
  lam * (0 - Phi(o_t)); the horizon (truncation) is not terminal, so its potential is the
  critic's (ppo bootstraps past it; the shaping then telescopes as the return does);
* grpo sums an episode's rewards undiscounted (gamma = 1), so the sum telescopes to
  success + lam * Phi(o_T) for a failure and exactly 1 for a success: a failure is ranked by
  how far the critic says it got, and no failure (lam < 1) outscores a success.
ppo uses its own discount, and GAE sees a dense per-step signal.

Also offered (`mode delta`): VLAC's raw reward r'_t = r_t + lam * delta(o_t, o_t+1), what the
paper trains with. Its sum does not telescope: a policy that moves back and forth collects
the critic's asymmetry (critics.md 1.9), so it is exploitable and documented as such.

The critic stays frozen for the whole run (no gradient ever reaches it). After every call
`metrics` holds the critic's view beside the truth: its score of each episode (final progress;
summed deltas in delta mode) averaged over successes and over failures, that score's ROC-AUC
for success in this batch, the mean shaped bonus, and `alarm` = 1 when the AUC falls below
`alarm_auc`, logged (and warned) so that a run whose reward has come apart from success says so
while it runs.
Shapes: T decision steps, B episodes, H, W frame size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vla_rl.core.config import ConfigError
from vla_rl.core.trajectories import Trajectories

MODES = ("potential", "delta")
log = logging.getLogger(__name__)


@dataclass
class CriticRewardConfig:
    """How the critic's answers become rewards (`--<method>.shaping.*`); the critic itself is
    `--<method>.critic DIR`."""

    mode: str = "potential"
    """potential: potential-based shaping with Phi = anchored progress (policy-invariant, the
    default critics.md 4.4 recommends); delta: VLAC's raw per-step delta (exploitable)."""
    weight: float = 0.5
    """lam, the shaping weight beside a success reward of 1. critics.md: 0.1-1 (VLA-RL's fork
    used 0.1); 0.5 keeps every grpo failure (at most 0.5) below every success."""
    batch_size: int = 64
    """Frame pairs per critic call (its memory; the CPU critic measured at batch 1 and 64)."""
    oracle_scale: float = 10.0
    """`dense_oracle` only: the env reward that counts as progress 1. Meta-World v3's per-step
    rewards lie in [0, 10] (10 at success), so 10 maps them to [0, 1] like a critic's."""
    alarm_auc: float = 0.6
    """Below this success-vs-failure ROC-AUC of the critic's episode scores in a batch, the
    step logs `critic/alarm` = 1 and a warning: the reward no longer tracks success."""


def check_critic_reward(path: str | None, cfg: CriticRewardConfig, flag: str) -> None:
    """ConfigError (one line) for settings nothing can run with; runs before anything is
    written."""
    if path is None:
        raise ConfigError(
            f"--{flag}.reward critic needs --{flag}.critic DIR: a critic from `vla-rl "
            "fit-critic` (config.json + model.safetensors) or a VLAC checkpoint directory"
        )
    if cfg.mode not in MODES:
        raise ConfigError(f"--{flag}.shaping.mode {cfg.mode!r} is not one of: {', '.join(MODES)}")
    if cfg.weight < 0 or cfg.batch_size < 1:
        raise ConfigError(f"--{flag}.shaping.weight must be >= 0 and batch-size >= 1")


def load_critic(
    path: str, batch_size: int = 64, device: str = "cpu", flag: str = "--<method>.critic"
) -> Any:
    """The ProgressCritic stored at `path`: a fitted pairwise critic, or a VLAC checkpoint
    (vla_rl.rewards.vlac, where installed). One-line ValueError naming both for anything
    else; `flag` is the option the messages name."""
    from pathlib import Path

    from vla_rl.rewards.pairwise_critic import CONFIG_FILE, FORMAT, PairwiseProgressCritic

    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{flag} {path}: no such directory")
    config = directory / CONFIG_FILE
    text = config.read_text() if config.is_file() else ""
    if f'"{FORMAT}"' in text:
        return PairwiseProgressCritic.load(directory, device=device, batch_size=batch_size)
    try:
        from vla_rl.rewards import vlac
    except ImportError:
        vlac = None
    if vlac is not None and vlac.is_vlac_dir(directory):
        return vlac.load_critic(directory, device=device, batch_size=batch_size)
    raise ValueError(
        f"{flag} {path}: not a progress critic; expected a directory written by "
        f"`vla-rl fit-critic` ({CONFIG_FILE} of format {FORMAT!r}) or a VLAC checkpoint"
    )


# ---- the math, pure --------------------------------------------------------------------------
def potential_bonus(
    phi: torch.Tensor, valid: torch.Tensor, terminated: torch.Tensor, gamma: float
) -> torch.Tensor:
    """gamma * Phi(o_t+1) - Phi(o_t) per decision step (T, B), 0 on padding.

    phi (T + 1, B): the potential of the frame before step 0 and after every step (padding rows
    past an episode's end hold anything); valid, terminated (T, B) bool. The frame after a
    terminal (success) step is absorbing: its potential counts as 0.
    """
    after = phi[1:] * (~terminated).float()
    return (gamma * after - phi[:-1]) * valid.float()


def delta_bonus(deltas: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """VLAC's raw reward delta(o_t, o_t+1) per step (T, B), 0 on padding."""
    return deltas * valid.float()


def batch_auc(scores: np.ndarray, success: np.ndarray) -> float | None:
    """ROC-AUC of `scores` (B,) for success vs failure (ties count half); None without both."""
    pos, neg = scores[success], scores[~success]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


# ---- the reward model ------------------------------------------------------------------------
class CriticReward:
    """`critic`: sparse success plus the frozen critic's shaping (or raw delta) per decision
    step. Reads `traj.frames`: one frame before the first step and one after each (the
    rollout renders them at `frame_size`, the critic's input side)."""

    def __init__(self, critic: Any, cfg: CriticRewardConfig, gamma: float):
        self.critic = critic
        self.cfg = cfg
        self.gamma = gamma
        self.frame_size = int(getattr(critic, "image_size", 64))
        self.metrics: dict[str, float] = {}
        self._warned_unknown: set[str] = set()

    @classmethod
    def build(cls, method_cfg: Any, policy: Any = None) -> CriticReward:
        """From the method's `critic` (directory) and `shaping` settings; gamma is the
        method's discount where it has one (ppo), else 1 (grpo and srpo sum undiscounted)."""
        check_critic_reward(method_cfg.critic, method_cfg.shaping, "<method>")
        critic = load_critic(method_cfg.critic, method_cfg.shaping.batch_size)
        return cls(critic, method_cfg.shaping, float(getattr(method_cfg, "gamma", 1.0)))

    def _warn_unknown(self, instructions: list[str]) -> None:
        knows = getattr(self.critic, "knows", None)
        for text in dict.fromkeys(instructions):
            if knows is not None and not knows(text) and text not in self._warned_unknown:
                self._warned_unknown.add(text)
                log.warning("the critic never saw the instruction %r: it answers 0 there", text)

    def __call__(self, traj: Trajectories) -> torch.Tensor:
        if traj.frames is None:
            raise ValueError("the critic reward needs the rollout's frames (traj.frames)")
        T, B = traj.valid.shape
        instructions = list(traj.obs["instruction"])
        self._warn_unknown(instructions)
        phi = torch.zeros(T + 1, B)
        deltas = torch.zeros(T, B)
        for b, frames in enumerate(traj.frames):
            n = int(traj.valid[:, b].sum())  # decision steps; frames: n + 1 of them
            frames = np.asarray(frames)[: n + 1]
            if self.cfg.mode == "potential":
                phi[: n + 1, b] = self.critic.progress(frames, instructions[b], "anchored")
            else:
                deltas[:n, b] = self.critic.delta(frames[:-1], frames[1:], instructions[b])
            phi[n + 1 :, b] = phi[n, b]
        if self.cfg.mode == "potential":
            bonus = potential_bonus(phi, traj.valid, traj.terminated, self.gamma)
        else:
            bonus = delta_bonus(deltas, traj.valid)
        sparse = traj.terminated.float() * traj.success.float()[None] * traj.valid.float()
        # the critic's own score of each episode: its final progress (potential), or the sum of
        # its deltas (delta mode)
        if self.cfg.mode == "potential":
            score = phi[traj.valid.sum(0), torch.arange(B)]
        else:
            score = deltas.sum(0)
        self._log(score.numpy(), traj.success.numpy().astype(bool), bonus)
        return sparse + self.cfg.weight * bonus

    def _log(self, score: np.ndarray, success: np.ndarray, bonus: torch.Tensor) -> None:
        """The critic's view beside the truth (see the module docstring). score, success (B,)."""

        def mean(x: np.ndarray) -> float:
            return float(x.mean()) if len(x) else float("nan")

        self.metrics = {
            "critic/bonus_per_episode": float(bonus.sum(0).mean()),
            "critic/score_success": mean(score[success]),
            "critic/score_failure": mean(score[~success]),
        }
        auc = batch_auc(score, success)
        if auc is None:  # one class only: nothing to separate
            return
        self.metrics["critic/auc"] = auc
        self.metrics["critic/alarm"] = float(auc < self.cfg.alarm_auc)
        if auc < self.cfg.alarm_auc:
            log.warning(
                "critic alarm: its score separates this batch's successes from failures with "
                "ROC-AUC %.2f (< %.2f): the reward no longer tracks success",
                auc, self.cfg.alarm_auc,
            )  # fmt: skip


class DenseOracleReward:
    """`dense_oracle`: the same shaping with the simulator's own dense reward as the potential,
    a privileged reference to set a critic beside (never a label): Phi(o_t+1) is the mean env
    reward over decision step t's chunk / `oracle_scale`, Phi(o_0) = 0 as the anchored
    critic's. Success and the shaping weight as for `critic`."""

    frame_size = 0

    def __init__(self, cfg: CriticRewardConfig, gamma: float):
        self.cfg = cfg
        self.gamma = gamma
        self.metrics: dict[str, float] = {}

    @classmethod
    def build(cls, method_cfg: Any, policy: Any = None) -> DenseOracleReward:
        return cls(method_cfg.shaping, float(getattr(method_cfg, "gamma", 1.0)))

    def __call__(self, traj: Trajectories) -> torch.Tensor:
        if traj.chunk_steps is None:
            raise ValueError("dense_oracle needs each decision step's env step count")
        steps = traj.chunk_steps.clamp(min=1).float()  # a short last chunk is averaged right
        phi = torch.zeros(traj.valid.shape[0] + 1, traj.valid.shape[1])
        phi[1:] = (traj.rewards.float() / steps / self.cfg.oracle_scale).clamp(0.0, 1.0)
        bonus = potential_bonus(phi, traj.valid, traj.terminated, self.gamma)
        sparse = traj.terminated.float() * traj.success.float()[None] * traj.valid.float()
        self.metrics = {"oracle/bonus_per_episode": float(bonus.sum(0).mean())}
        return sparse + self.cfg.weight * bonus
