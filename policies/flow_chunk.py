"""A pi0-style flow-matching action-chunk policy with a noise-injected chain for `log_prob`.

Training (behaviour cloning, rectified flow): with x0 ~ N(0, I), x1 the demonstrated chunk scaled
to [-1, 1], and t ~ U(0, 1), regress v(t, x_t, o) on x1 - x0 where x_t = (1 - t) x0 + t x1.

Sampling (ReinFlow, ../shared/reference/methods.md section 9.3): K Euler steps of size 1/K
with learnable noise injected at each step,
    a^{k+1} = a^k + v(t_k, a^k, o) / K + sigma(t_k, a^k, o) * eps,   a^0 ~ N(0, I),
with sigma bounded in [min_std, max_std]. The whole chain is stored in the sample's extras, and
    log pi = log N(a^0; 0, I) + sum_k log N(a^{k+1}; a^k + v / K, sigma^2)
is exact, so `log_prob(obs, sample)` re-scores a stored chain under the current weights.
`deterministic=True` drops the noise (the plain flow ODE); its chain has no usable likelihood.
Shapes: chunk (B, Ta, Da); the chain lives in the flattened space (B, K + 1, Ta * Da).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla_rl.core.noise import noise_keys
from vla_rl.core.policy import BasePolicy
from vla_rl.core.types import ActionSample, Observation
from vla_rl.policies.gaussian_chain import (
    chain_log_prob,
    chain_log_prob_terms,
    gaussian_log_prob,  # noqa: F401  (re-exported: the flow tests check it by hand)
    sample_chain_candidates,
)
from vla_rl.policies.obs_encoder import (
    InstructionTokenizer,
    Normalizer,
    ObservationEncoder,
    benchmark_vocab,
    obs_tensors,
)


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of flow times t in [0, 1]."""
    freqs = torch.exp(torch.linspace(0, math.log(1000.0), dim // 2, device=t.device))
    angles = t[:, None] * freqs[None] * math.pi
    return torch.cat([angles.sin(), angles.cos()], -1)


class FlowChunkPolicy(BasePolicy):
    policy_type = "flow"
    deterministic_candidates_differ = True  # the flow ODE from K initial noises

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        vocab: list[str],
        chunk_size: int = 8,
        hidden: int = 256,
        num_flow_steps: int = 10,
        num_cameras: int = 0,
        min_std: float = 0.01,
        max_std: float = 0.3,
    ):
        """chunk_size (Ta): 8, a short open-loop chunk as OpenVLA-OFT uses on LIBERO.
        num_flow_steps (K): 10 Euler steps, pi0's default. min_std / max_std: bounds of the
        injected noise in the [-1, 1] action scale; ReinFlow bounds its noise the same way, and
        0.01 keeps every transition's likelihood finite."""
        super().__init__()
        self.config = dict(
            state_dim=state_dim, action_dim=action_dim, vocab=list(vocab), chunk_size=chunk_size,
            hidden=hidden, num_flow_steps=num_flow_steps, num_cameras=num_cameras,
            min_std=min_std, max_std=max_std,
        )  # fmt: skip
        self.chunk_size = chunk_size
        self.action_dim = action_dim
        self.num_flow_steps = num_flow_steps
        self.min_std, self.max_std = min_std, max_std
        self.tokenizer = InstructionTokenizer(vocab)
        self.normalizer = Normalizer(state_dim, action_dim)
        self.encoder = ObservationEncoder(state_dim, len(vocab), hidden, num_cameras)
        flat = chunk_size * action_dim
        self.time_dim = 64
        self.velocity = nn.Sequential(
            nn.Linear(flat + hidden + self.time_dim, hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, flat),
        )  # fmt: skip
        self.noise = nn.Sequential(
            nn.Linear(flat + hidden + self.time_dim, hidden), nn.GELU(), nn.Linear(hidden, flat)
        )

    def get_config(self) -> dict[str, Any]:
        return dict(self.config)

    @classmethod
    def contract_instance(cls, benchmark: Any, directory: Path) -> FlowChunkPolicy:
        """A tiny random-weight instance (Ta = 2, hidden 32, K = 3) for the contract test."""
        return cls(benchmark.state_dim, benchmark.action_dim, benchmark_vocab(benchmark),
                   chunk_size=2, hidden=32, num_flow_steps=3)  # fmt: skip

    # ---- the two networks -------------------------------------------------------------------
    def _inputs(self, t: torch.Tensor, x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, feature, time_embedding(t, self.time_dim)], -1)

    def _velocity_and_std(self, t, x, feature):
        """Velocity, injected-noise std, and the velocity network's last hidden layer (the
        feature TACO scores, pi0's action-expert output before its action projection)."""
        inputs = self._inputs(t, x, feature)
        std = self.min_std + (self.max_std - self.min_std) * torch.sigmoid(self.noise(inputs))
        hidden = self.velocity[:-1](inputs)
        return self.velocity[-1](hidden), std, hidden

    def encode(self, obs: Observation) -> torch.Tensor:
        """Observation features (B, hidden): computed once per observation, shared by all steps."""
        return self.encoder(*obs_tensors(obs, self.normalizer, self.tokenizer))

    # ---- behaviour cloning --------------------------------------------------------------------
    def bc_loss(self, obs: Observation, actions: torch.Tensor) -> torch.Tensor:
        """Flow-matching loss for demonstrated chunks `actions` (B, Ta, Da) in env units."""
        x1 = self.normalizer.action_to_unit(actions).flatten(1)
        x0 = torch.randn_like(x1)
        t = torch.rand(len(x1), device=x1.device)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        v, _, _ = self._velocity_and_std(t, xt, self.encode(obs))
        return ((v - (x1 - x0)) ** 2).mean()

    def noised_target_features(
        self, obs: Observation, actions: torch.Tensor, draws: int, generator=None
    ) -> torch.Tensor:
        """TACO's noised ground-truth features (its Eq. 7-8): the velocity network's hidden
        layer at the last Euler step's time t = (K - 1) / K, on the demonstrated chunk
        `actions` (B, Ta, Da) noised to that time, x = (1 - t) x0 + t x1, for `draws` noise
        draws x0 each: (B, draws, hidden), the feature sampling scores at test time."""
        x1 = self.normalizer.action_to_unit(actions).flatten(1)
        t = (self.num_flow_steps - 1) / self.num_flow_steps
        x0 = torch.randn(len(x1), draws, x1.shape[1], generator=generator)
        xt = ((1 - t) * x0 + t * x1[:, None]).flatten(0, 1)
        feature = self.encode(obs).repeat_interleave(draws, 0)
        _, _, hidden = self._velocity_and_std(torch.full((len(xt),), t), xt, feature)
        return hidden.view(len(x1), draws, -1)

    # ---- sampling and likelihood (the chain loops live in gaussian_chain) ----------------------
    def _transition(self, feature: torch.Tensor, record: dict | None = None):
        """Euler step k with injected noise: mean x + v / K, std sigma(t_k, x, o). `record`
        receives the velocity network's hidden feature of the final step under "feature"."""
        k_total = self.num_flow_steps

        def transition(k: int, x: torch.Tensor, deterministic: bool):
            t = torch.full((len(x),), k / k_total)
            v, std, hidden = self._velocity_and_std(t, x, feature)
            if record is not None and k == k_total - 1:
                record["feature"] = hidden
            return x + v / k_total, std * self.temperature

        return transition

    def sample_actions(self, obs: Observation, deterministic: bool = False) -> ActionSample:
        return self.sample_candidates(obs, 1, deterministic)

    def sample_candidates(
        self,
        obs: Observation,
        num_candidates: int,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> ActionSample:
        """K chunks per observation from one encoding; extras["feature"] is the velocity
        network's last hidden layer (B * K, hidden) at the final flow step."""
        chain, log_prob, feature = sample_chain_candidates(
            self._transition, self.encode(obs), num_candidates,
            self.chunk_size * self.action_dim, self.num_flow_steps, deterministic, generator,
            noise_keys(obs),
        )  # fmt: skip
        unit = chain[:, -1].view(-1, self.chunk_size, self.action_dim)
        return ActionSample(
            actions=self.normalizer.action_from_unit(unit),
            log_prob=log_prob,
            extras={"chain": chain, "feature": feature},  # (B, K + 1, Ta * Da), (B, hidden)
        )

    def log_prob(self, obs: Observation, sample: ActionSample) -> torch.Tensor:
        """Exact log-likelihood (B,) of the stored chain under the current weights."""
        return chain_log_prob(self._transition(self.encode(obs)), sample.extras["chain"])

    def log_prob_terms(self, obs: Observation, sample: ActionSample):
        """Per (flow step, dim) terms (B, K * Ta * Da) and the chain's entropy (B,)."""
        return chain_log_prob_terms(self._transition(self.encode(obs)), sample.extras["chain"])

    def observation_features(self, obs: Observation) -> torch.Tensor:
        return self.encode(obs)
