"""Value networks shared by the methods: a batched ensemble of Q-heads (residual RL's critics),
Polyak averaging of target networks, and a state-value MLP (PPO's critic on low-dim state).

Shapes: B rows, N heads, Da action dim, F feature dim (whatever the method feeds its critics).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class EnsembleLinear(nn.Module):
    """N independent Linear layers applied in one batched matmul: (N, B, in) -> (N, B, out)."""

    def __init__(self, n: int, inputs: int, outputs: int):
        super().__init__()
        bound = 1 / math.sqrt(inputs)  # nn.Linear's default init, per head
        self.weight = nn.Parameter(torch.empty(n, inputs, outputs).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, outputs).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
        """heads: indices of the heads to apply (x then has len(heads) rows), None: all."""
        if heads is None:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.baddbmm(self.bias[heads], x, self.weight[heads])


class CriticEnsemble(nn.Module):
    """N Q-heads Q_j(features, action): 2 x (Linear, LayerNorm, ReLU) + Linear, per head."""

    def __init__(self, n: int, inputs: int, hidden: int):
        super().__init__()
        self.n = n
        self.layers = nn.ModuleList(
            [EnsembleLinear(n, inputs, hidden), EnsembleLinear(n, hidden, hidden)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(hidden), nn.LayerNorm(hidden)])
        self.head = EnsembleLinear(n, hidden, 1)

    def forward(
        self, features: torch.Tensor, action: torch.Tensor, heads: torch.Tensor | None = None
    ) -> torch.Tensor:
        """features (B, F), action (B, Da) -> Q (N, B); with `heads` (N' indices) only those
        heads run, Q (N', B) (REDQ's target needs 2 of them: the others would be thrown away)."""
        n = self.n if heads is None else len(heads)
        x = torch.cat([features, action], -1).expand(n, -1, -1)
        for layer, norm in zip(self.layers, self.norms):
            x = F.relu(norm(layer(x, heads)))
        return self.head(x, heads).squeeze(-1)


def polyak(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, every parameter (TD3's soft update), in one
    multi-tensor call rather than one small kernel per parameter."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


class StateCritic(nn.Module):
    """V(s): MLP on the standardised state and a one-hot of the task. The state statistics are
    fitted on the first batch and then fixed (the critic's inputs keep their meaning)."""

    def __init__(self, state_dim: int, tasks: list[str], hidden: int):
        super().__init__()
        self.task_index = {t: i for i, t in enumerate(tasks)}
        self.register_buffer("mean", torch.zeros(state_dim))
        self.register_buffer("std", torch.ones(state_dim))
        self.register_buffer("fitted", torch.tensor(False))
        self.net = nn.Sequential(
            nn.Linear(state_dim + len(tasks), hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1),
        )  # fmt: skip

    def fit(self, states: torch.Tensor) -> None:
        self.mean.copy_(states.mean(0))
        self.std.copy_(states.std(0).clamp_min(1e-3))
        self.fitted.fill_(True)

    def forward(self, states: torch.Tensor, tasks: list[str]) -> torch.Tensor:
        """states (N, Ds), tasks N names -> values (N,)."""
        onehot = torch.zeros(len(tasks), len(self.task_index))
        onehot[torch.arange(len(tasks)), [self.task_index[t] for t in tasks]] = 1
        x = torch.cat([(states - self.mean) / self.std, onehot], -1)
        return self.net(x).squeeze(-1)
