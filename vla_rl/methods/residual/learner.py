"""The residual learner (ResFiT, Ankile et al. 2025, arXiv 2509.19301): TD3-style off-policy
actor-critic on a frozen base, with the RLPD/REDQ tricks ResFiT relies on:

* critics: an ensemble of N LayerNorm MLPs (`vla_rl.rl.critics.CriticEnsemble`); the target
  takes the min over a random subset of 2 heads (REDQ); n-step returns; target-policy smoothing
  noise; Polyak-averaged targets of critics and actor;
* the actor is the deterministic residual (`ResidualPolicy.residual`), trained to maximise the
  ensemble's mean Q at clamp(a_base + residual);
* everything happens in the normalised action space [-1, 1]^Da.

`learn` runs the loop's schedule of updates: utd critic updates per env step, the actor every
utd-th, after a critic-only warm-up, on batches half online replay, half demonstrations.
Re-implemented from ../shared/reference/methods.md section 3 (ResFiT's code is CC-BY-NC).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from vla_rl.rl.critics import CriticEnsemble, polyak
from vla_rl.rl.replay_buffer import ReplayBuffer, sample_mixed

if TYPE_CHECKING:
    from vla_rl.methods.residual.config import ResidualConfig
    from vla_rl.methods.residual.policy import ResidualPolicy


class Residual:
    """Owns the critics, target networks and optimisers; `update` is one critic step and,
    when asked, one actor step; `learn` is the schedule of updates."""

    def __init__(self, policy: ResidualPolicy, cfg: ResidualConfig):
        self.policy, self.cfg = policy, cfg
        action_dim = policy.action_dim
        self.critic = CriticEnsemble(cfg.num_critics, policy.feature_dim + action_dim, cfg.hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_target = copy.deepcopy(policy.actor).requires_grad_(False)
        # fused: one kernel per step for all parameters (the per-parameter loop was 1/8 of an
        # update on the CPU); the same Adam
        self.actor_opt = torch.optim.Adam(policy.actor.parameters(), lr=cfg.actor_lr, fused=True)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, fused=True)

    def _tensors(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v) for k, v in batch.items()}

    def critic_loss(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over heads of (Q_j(s, a) - y)^2, y the n-step target; returns (loss, y)."""
        cfg, pol = self.cfg, self.policy
        with torch.no_grad():
            next_feat = pol.features(b["next_state"], b["task"], b["next_base"])
            next_res = pol.action_scale * torch.tanh(self.actor_target(next_feat))
            smoothing = (torch.randn_like(next_res) * cfg.exploration_std).clamp(
                -cfg.target_noise_clip, cfg.target_noise_clip
            )
            next_action = (b["next_base"] + next_res + smoothing).clamp(-1, 1)
            subset = torch.randperm(cfg.num_critics)[: cfg.critic_subset]  # REDQ
            q_next = self.critic_target(next_feat, next_action, subset)  # (subset, B)
            target = b["ret"] + b["discount"] * q_next.min(0).values
        q = self.critic(pol.features(b["state"], b["task"], b["base"]), b["action"])
        return ((q - target) ** 2).mean(), target

    def actor_loss(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """-mean_j Q_j(s, clamp(a_base + residual(s, a_base))), deterministic residual (TD3)."""
        feat = self.policy.features(b["state"], b["task"], b["base"])
        residual = self.policy.residual(feat)
        action = (b["base"] + residual).clamp(-1, 1)
        loss = -self.critic(feat, action).mean()
        if self.cfg.actor_l2:
            loss = loss + self.cfg.actor_l2 * (residual**2).sum(-1).mean()
        return loss

    def update(self, batch: dict[str, np.ndarray], update_actor: bool) -> dict[str, torch.Tensor]:
        b = self._tensors(batch)
        cfg = self.cfg
        loss, target = self.critic_loss(b)
        self.critic_opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
        self.critic_opt.step()
        # tensors, read only when logged: .item() per update would wait for the device each time
        metrics = {"critic_loss": loss.detach(), "q_target": target.mean()}
        if update_actor:
            actor_loss = self.actor_loss(b)
            # Gradients of the actor only: backward() would also fill the critics' weight
            # gradients through Q(s, a(s)), a third of the work, for the next zero_grad to drop.
            params = list(self.policy.actor.parameters())
            for param, grad in zip(params, torch.autograd.grad(actor_loss, params)):
                param.grad = grad
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            self.actor_opt.step()
            polyak(self.actor_target, self.policy.actor, cfg.tau)
            metrics["actor_loss"] = actor_loss.detach()
        polyak(self.critic_target, self.critic, cfg.tau)
        return metrics

    def learn(
        self,
        online: ReplayBuffer,
        demos: ReplayBuffer | None,
        rng: np.random.Generator,
        state: dict[str, Any],
        owed: float,
    ) -> tuple[float, dict[str, torch.Tensor]]:
        """The loop's schedule (ResFiT): run the `owed` critic updates (utd per env step), the
        actor stepping with every utd-th, on batches mixing online and demo rows (RLPD); returns
        (updates still owed, the last update's metrics). The loop's `state` counts "updates".
        The first call fixes the state statistics from the warm-up data and the demos, so the
        critics' inputs mean the same thing for the whole run, then runs the critic-only warm-up.
        """
        cfg, metrics = self.cfg, {}
        if not state["stats_fitted"]:
            parts = [online.data["state"][: len(online)]]
            if demos is not None:
                parts.append(demos.data["state"][: len(demos)])
            self.policy.fit_state_stats(np.concatenate(parts))
            for _ in range(cfg.critic_warmup_updates):
                batch = sample_mixed(online, demos, cfg.batch_size, cfg.demo_fraction, rng)
                metrics = self.update(batch, update_actor=False)
            state["updates"] += cfg.critic_warmup_updates
            state["stats_fitted"] = True
        while owed >= 1:
            owed -= 1
            state["updates"] += 1
            batch = sample_mixed(online, demos, cfg.batch_size, cfg.demo_fraction, rng)
            metrics = self.update(batch, update_actor=state["updates"] % cfg.utd == 0)
        return owed, metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_target.load_state_dict(state["actor_target"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
