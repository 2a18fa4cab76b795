"""A Diffusion Policy style action-chunk denoiser with a Gaussian DDIM chain for `log_prob`.

Training (DDPM, Ho et al. 2020; Diffusion Policy, Chi et al. 2023): the demonstrated chunk x^0,
scaled to [-1, 1], is noised with diffusers' `DDPMScheduler` (100 steps, squared-cosine
schedule, as Diffusion Policy) and an MLP denoiser eps(x^t, t, o) regresses the noise.

Sampling (DDIM, Song et al. 2021, on the same schedule via diffusers' `DDIMScheduler`): K steps
t_K > ... > t_1 of
    x0_hat = clip((x^t - sqrt(1 - abar_t) eps) / sqrt(abar_t), -1, 1)
    sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
    mean    = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_t^2) eps
    x^prev  = mean + std_t * z,   std_t = max(sigma_t, min_std)
which is diffusers' DDIM step (checked in the tests) with DPPO's floor on the std. With eta > 0
every step is a Gaussian transition, so (DPPO, ../shared/reference/methods.md section 9.1)
    log pi = log N(x^K; 0, I) + sum_k log N(x^{k-1}; mean_k, std_k^2)
is exact for the stored chain, and `log_prob(obs, sample)` re-scores it under new weights.
`deterministic=True` runs eta = 0 with no noise (plain DDIM; no usable likelihood).
Shapes: chunk (B, Ta, Da); the chain lives in the flattened space (B, K + 1, Ta * Da).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla_rl.core.noise import noise_keys
from vla_rl.core.policy import BasePolicy
from vla_rl.core.types import ActionSample, Observation
from vla_rl.policies.flow_chunk import time_embedding
from vla_rl.policies.gaussian_chain import (
    chain_log_prob,
    chain_log_prob_terms,
    sample_chain_candidates,
)
from vla_rl.policies.obs_encoder import (
    InstructionTokenizer,
    Normalizer,
    ObservationEncoder,
    benchmark_vocab,
    obs_tensors,
)


def make_schedulers(train_steps: int, inference_steps: int):
    """diffusers' DDPM (training) and DDIM (sampling) schedulers on one squared-cosine schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(num_train_timesteps=train_steps, beta_schedule="squaredcos_cap_v2",
                  clip_sample=True, prediction_type="epsilon")  # fmt: skip
    ddpm = DDPMScheduler(**common)
    ddim = DDIMScheduler(**common, set_alpha_to_one=True, steps_offset=0)
    ddim.set_timesteps(inference_steps)
    return ddpm, ddim


class DiffusionChunkPolicy(BasePolicy):
    policy_type = "diffusion"
    deterministic_candidates_differ = True  # DDIM (eta = 0) from K initial noises

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        vocab: list[str],
        chunk_size: int = 8,
        hidden: int = 256,
        train_steps: int = 100,
        inference_steps: int = 10,
        eta: float = 1.0,
        min_std: float = 0.04,
        num_cameras: int = 0,
    ):
        """train_steps: 100 DDPM steps (Diffusion Policy). inference_steps (K): 10 DDIM steps
        (DPPO fine-tunes with 5-10). eta: 1.0 when sampling stochastically (DPPO's DDIM
        fine-tuning). min_std: floor on every transition's std in the [-1, 1] action scale
        (DPPO floors it at 0.04-0.1) so each likelihood term stays finite."""
        super().__init__()
        self.config = dict(
            state_dim=state_dim, action_dim=action_dim, vocab=list(vocab), chunk_size=chunk_size,
            hidden=hidden, train_steps=train_steps, inference_steps=inference_steps, eta=eta,
            min_std=min_std, num_cameras=num_cameras,
        )  # fmt: skip
        self.chunk_size, self.action_dim = chunk_size, action_dim
        self.train_steps, self.eta, self.min_std = train_steps, eta, min_std
        self.ddpm, self.ddim = make_schedulers(train_steps, inference_steps)
        self.tokenizer = InstructionTokenizer(vocab)
        self.normalizer = Normalizer(state_dim, action_dim)
        self.encoder = ObservationEncoder(state_dim, len(vocab), hidden, num_cameras)
        flat = chunk_size * action_dim
        self.time_dim = 64
        self.denoiser = nn.Sequential(
            nn.Linear(flat + hidden + self.time_dim, hidden), nn.Mish(),
            nn.Linear(hidden, hidden), nn.Mish(), nn.Linear(hidden, flat),
        )  # fmt: skip

    def get_config(self) -> dict[str, Any]:
        return dict(self.config)

    @classmethod
    def contract_instance(cls, benchmark: Any, directory: Path) -> DiffusionChunkPolicy:
        """A tiny random-weight instance (Ta = 2, hidden 32, 3 DDIM steps) for the contract
        test."""
        return cls(benchmark.state_dim, benchmark.action_dim, benchmark_vocab(benchmark),
                   chunk_size=2, hidden=32, inference_steps=3)  # fmt: skip

    def encode(self, obs: Observation) -> torch.Tensor:
        return self.encoder(*obs_tensors(obs, self.normalizer, self.tokenizer))

    def eps(self, x: torch.Tensor, t: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """Predicted noise (B, Ta * Da) at integer timesteps t (B,)."""
        return self.eps_and_hidden(x, t, feature)[0]

    def eps_and_hidden(self, x: torch.Tensor, t: torch.Tensor, feature: torch.Tensor):
        """Predicted noise and the denoiser's last hidden layer (B, hidden): TACO's feature."""
        emb = time_embedding(t.float() / self.train_steps, self.time_dim)
        hidden = self.denoiser[:-1](torch.cat([x, feature, emb], -1))
        return self.denoiser[-1](hidden), hidden

    # ---- behaviour cloning --------------------------------------------------------------------
    def bc_loss(self, obs: Observation, actions: torch.Tensor) -> torch.Tensor:
        """DDPM noise-prediction loss for demonstrated chunks `actions` (B, Ta, Da)."""
        x0 = self.normalizer.action_to_unit(actions).flatten(1)
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.train_steps, (len(x0),))
        xt = self.ddpm.add_noise(x0, noise, t)
        return ((self.eps(xt, t, self.encode(obs)) - noise) ** 2).mean()

    def noised_target_features(
        self, obs: Observation, actions: torch.Tensor, draws: int, generator=None
    ) -> torch.Tensor:
        """TACO's noised ground-truth features (its Eq. 7-8): the denoiser's hidden layer at the
        last DDIM step's timestep t, on the demonstrated chunk `actions` (B, Ta, Da) noised to
        it, x = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, for `draws` noise draws each:
        (B, draws, hidden), the feature sampling scores at test time."""
        x0 = self.normalizer.action_to_unit(actions).flatten(1)
        t = self._steps()[-1][0]
        abar = self.ddim.alphas_cumprod[t]
        noise = torch.randn(len(x0), draws, x0.shape[1], generator=generator)
        xt = (abar.sqrt() * x0[:, None] + (1 - abar).sqrt() * noise).flatten(0, 1)
        feature = self.encode(obs).repeat_interleave(draws, 0)
        _, hidden = self.eps_and_hidden(xt, torch.full((len(xt),), t), feature)
        return hidden.view(len(x0), draws, -1)

    # ---- the DDIM chain -----------------------------------------------------------------------
    def _steps(self) -> list[tuple[int, int]]:
        """(t, t_prev) for each DDIM step, from the noisiest; t_prev = -1 means 'clean'."""
        ts = [int(t) for t in self.ddim.timesteps]
        return list(zip(ts, ts[1:] + [-1]))

    def transition(
        self,
        x: torch.Tensor,
        t: int,
        t_prev: int,
        feature: torch.Tensor,
        eta: float,
        record: dict | None = None,
    ):
        """Mean and std (B, Ta * Da) of x^{t_prev} given x^t (see the module docstring);
        `record` receives the denoiser's hidden feature under "feature"."""
        abar = self.ddim.alphas_cumprod
        a_t = abar[t]
        a_prev = abar[t_prev] if t_prev >= 0 else torch.tensor(1.0)
        eps, hidden = self.eps_and_hidden(x, torch.full((len(x),), t), feature)
        if record is not None:
            record["feature"] = hidden
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        mean = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
        return mean, sigma

    def _chain_transition(self, feature: torch.Tensor, record: dict | None = None):
        """DDIM step k as a Gaussian transition (gaussian_chain): deterministic sampling
        follows eta = 0; the std is floored at min_std either way. `record` ends up holding the
        denoiser's hidden feature of the final step."""
        steps = self._steps()

        def transition(k: int, x: torch.Tensor, deterministic: bool):
            t, t_prev = steps[k]
            eta = 0.0 if deterministic else self.eta
            mean, sigma = self.transition(x, t, t_prev, feature, eta, record)
            return mean, sigma.clamp_min(self.min_std).expand_as(mean) * self.temperature

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
        """K chunks per observation from one encoding; extras["feature"] is the denoiser's last
        hidden layer (B * K, hidden) at the final DDIM step."""
        chain, log_prob, feature = sample_chain_candidates(
            self._chain_transition, self.encode(obs), num_candidates,
            self.chunk_size * self.action_dim, len(self._steps()), deterministic, generator,
            noise_keys(obs),
        )  # fmt: skip
        unit = chain[:, -1].clamp(-1, 1).view(-1, self.chunk_size, self.action_dim)
        return ActionSample(
            actions=self.normalizer.action_from_unit(unit),
            log_prob=log_prob,
            extras={"chain": chain, "feature": feature},  # (B, K + 1, Ta * Da), (B, hidden)
        )

    def log_prob(self, obs: Observation, sample: ActionSample) -> torch.Tensor:
        """Exact log-likelihood (B,) of the stored (stochastic) chain under the current weights."""
        return chain_log_prob(self._chain_transition(self.encode(obs)), sample.extras["chain"])

    def log_prob_terms(self, obs: Observation, sample: ActionSample):
        """Per (DDIM step, dim) terms (B, K * Ta * Da) and the chain's entropy (B,)."""
        transition = self._chain_transition(self.encode(obs))
        return chain_log_prob_terms(transition, sample.extras["chain"])

    def observation_features(self, obs: Observation) -> torch.Tensor:
        return self.encode(obs)
