"""`--method ppo`: trajectory-level PPO on the base policy's own weights (VLA-RL, methods.md §2).

Each decision step (one action chunk) is one PPO action: its ratio comes from the chunk's
log-prob reduced over its parts (summed by default, as VLA-RL sums the 7 action tokens). The
advantage is GAE over decision steps with a separate critic V(s) on the env state (VLA-RL's
critic is a second OpenVLA with an MLP head on its last prompt-token state; on Meta-World's
39-D state a small MLP sees what it needs). The critic trains alone for the first
`critic_warmup_steps` RL steps (VLA-RL's value_init_steps) so the first policy updates see
advantages from a critic that has fitted the base's returns. The per-step reward is the
method's reward models (`--ppo.reward`, sparse success by default; a dense one such as
srpo_progress or a critic's fits the same slot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from vla_rl.core.trajectories import Trajectories
from vla_rl.methods.on_policy import (
    OnPolicyMethod,
    PolicyGradientConfig,
    train_on_policy,
)
from vla_rl.rl.advantages import gae
from vla_rl.rl.critics import StateCritic
from vla_rl.rl.distributed import all_sum, average_gradients, shard, world


@dataclass
class PPOConfig(PolicyGradientConfig):
    """Defaults from VLA-RL's released script (methods.md §2.6) unless stated."""

    lr: float = 1e-4
    """Policy learning rate. VLA-RL: 5e-6 on LoRA adapters of a 7B model; ours is for full
    fine-tuning of the bundled ~0.4 M-parameter policies: with it grpo took metaworld-flow from
    0.56 to 0.98 train success in 8 steps on button-press-topdown-v3 (calibration run)."""
    gamma: float = 0.99
    """Discount per decision step (VLA-RL: 0.99)."""
    lam: float = 0.95
    """GAE lambda (VLA-RL: 0.95)."""
    value_lr: float = 1e-3
    """Critic learning rate. VLA-RL: 5e-5 for an MLP head on a 7B backbone; ours trains a
    fresh small MLP from scratch."""
    value_clip: float = 0.2
    """Value clipping around the old prediction (VLA-RL: 0.2)."""
    value_epochs: int = 4
    """Critic passes over each step's data (VLA-RL: 1; a fresh small critic needs more)."""
    critic_warmup_steps: int = 2
    """RL steps at the start that train only the critic (VLA-RL: 5 iterations of 128 env steps
    x 20 envs; ours are 64 whole episodes each)."""
    critic_hidden: int = 256
    """Width of the critic's two hidden layers."""
    normalize_advantages: bool = False
    """Standardise advantages over each step's samples (VLA-RL: False)."""
    reduction: str = "mean"
    """How a decision step's log-prob parts form its ratio. VLA-RL sums its 7 action tokens
    (sum); summed over a flow chunk's K x Ta x Da = 320 parts, the log-ratio put 26-47% of the
    samples outside the clip range at every step (approx-KL up to 1.2) and ppo stalled on
    door-open-v3 (train success 0.36 after 160k env steps); with the mean nothing was clipped
    and it reached 0.52 (docs/RESULTS.md, "Why ppo stalls", measured on the train split). On
    MT10 the mean collapsed to 0 after about ten RL steps, with or without a KL anchor, and
    token (a ratio and a clip per part) did not in a 457k-step probe (docs/RESULTS.md, "ppo
    on MT10"): the next default to measure, not yet changed."""


class PPO(OnPolicyMethod):
    name = "ppo"

    def __init__(self, pg, policy, benchmark, tasks):
        super().__init__(pg, policy, benchmark, tasks)
        self.critic = StateCritic(benchmark.state_dim, tasks, self.pg.critic_hidden)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.pg.value_lr)
        self._targets: tuple | None = None

    def _values(self, traj: Trajectories) -> tuple[torch.Tensor, torch.Tensor]:
        """V at every step (T, B) and at each episode's final observation (B,)."""
        states = traj.obs["state"].float()  # (T, B, Ds)
        t, b = traj.valid.shape
        tasks = traj.tasks * t  # time-major flattening: row t * B + b is episode b
        with torch.no_grad():
            values = self.critic(states.reshape(t * b, -1), tasks).view(t, b)
            final = self.critic(traj.final_obs["state"].float(), traj.tasks)
        return values, final

    def advantages(self, traj):
        if not bool(self.critic.fitted):
            self.critic.fit(traj.obs["state"][traj.valid].float())
        rewards = self.reward(traj)
        values, final = self._values(traj)
        episode_end = traj.terminated.any(0)  # (B,) ended in a terminal (success) state
        adv, returns = gae(rewards, values, final, traj.valid, episode_end, self.pg.gamma,
                           self.pg.lam)  # fmt: skip
        if self.pg.normalize_advantages:
            v = adv[traj.valid]
            adv = (adv - v.mean()) / (v.std() + 1e-8) * traj.valid.float()
        self._targets = (returns, values)
        keep = torch.ones(traj.batch_size, dtype=torch.bool)
        explained = 1 - (returns - values)[traj.valid].var() / returns[traj.valid].var().clamp_min(
            1e-8
        )
        valid = traj.valid
        metrics = {"mean_reward": float(rewards.sum(0).mean()),
                   "value_explained_var": float(explained),
                   # the scale the policy step sees (GRPO's are standardised per group)
                   "adv_abs_mean": float(adv[valid].abs().mean()),
                   "return_mean": float(returns[valid].mean()),
                   "value_mean": float(values[valid].mean()), **self.reward.metrics}  # fmt: skip
        return adv, keep, metrics

    def updates_policy(self, rl_step: int) -> bool:
        return rl_step >= self.pg.critic_warmup_steps

    def extra_update(self, traj):
        """Clipped value regression on this step's GAE returns (VLA-RL's L_V)."""
        returns, old_values = self._targets
        t_idx, b_idx = torch.nonzero(traj.valid, as_tuple=True)
        states = traj.obs["state"][t_idx, b_idx].float()
        tasks = [traj.tasks[int(b)] for b in b_idx]
        target, old = returns[t_idx, b_idx], old_values[t_idx, b_idx]
        # Data-parallel as in policy_update (the same weighting rule: the loss is a mean over
        # the minibatch); torch's global RNG orders the samples, the same on every rank.
        rank, world_size = world()
        losses = []
        for _ in range(self.pg.value_epochs):
            order = torch.randperm(len(t_idx))
            for i in range(0, len(order), self.pg.minibatch_size):
                minibatch = order[i : i + self.pg.minibatch_size]
                mb = shard(minibatch, rank, world_size)
                share = len(mb) / len(minibatch)
                self.critic_opt.zero_grad(set_to_none=True)
                loss_value = 0.0  # an empty shard adds nothing
                if len(mb):
                    v = self.critic(states[mb], [tasks[int(j)] for j in mb])
                    clip = self.pg.value_clip
                    clipped = old[mb] + (v - old[mb]).clamp(-clip, clip)
                    worst = torch.maximum((v - target[mb]) ** 2, (clipped - target[mb]) ** 2)
                    loss = 0.5 * worst.mean()
                    (loss * (share * world_size)).backward()
                    loss_value = loss.item()
                average_gradients(self.critic.parameters())
                nn.utils.clip_grad_norm_(self.critic.parameters(), self.pg.grad_clip)
                self.critic_opt.step()
                losses.append(share * loss_value)
        return {"value_loss": all_sum([float(np.mean(losses))])[0]}

    def state_dict(self) -> dict[str, Any]:
        return {"critic": self.critic.state_dict(), "critic_opt": self.critic_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.critic_opt.load_state_dict(state["critic_opt"])


def train(cfg, pg: PPOConfig) -> dict[str, Any]:
    return train_on_policy(cfg, pg, PPO)
