"""The Gaussian Markov chain behind the diffusion and flow families' likelihoods.

Both families turn noise x^0 ~ N(0, I) into an action chunk through K steps, and with noise
injected at every step each step is a Gaussian transition N(x^{k+1}; mean_k(x^k), std_k^2). The
chain's log-likelihood is then exact:
    log pi = log N(x^0; 0, I) + sum_k log N(x^{k+1}; mean_k, std_k^2).
A family supplies `transition(k, x, deterministic) -> (mean, std)`; sampling and re-scoring a
stored chain are the same two loops for every family. Shapes: x (B, D), chain (B, K + 1, D).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from vla_rl.core import noise as noise_streams

LOG_2PI = math.log(2 * math.pi)

Transition = Callable[[int, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor]]


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, std^2)."""
    return -0.5 * (((x - mean) / std) ** 2 + LOG_2PI) - torch.log(std)


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) summed over the last dim: (B,)."""
    return gaussian_log_prob(x, torch.zeros_like(x), torch.ones_like(x)).sum(-1)


def sample_chain(
    transition: Transition,
    x: torch.Tensor,
    num_steps: int,
    deterministic: bool,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the chain from x = x^0; returns (chain (B, K + 1, D), log-likelihood (B,)).
    deterministic: follow the means (no noise); that chain has no usable likelihood.
    noise: the injected standard-normal noise (B, K, D) to use instead of fresh draws (a fixed
    noise bank); None draws it from the global generator."""
    chain = [x]
    log_prob = standard_normal_log_prob(x)
    for k in range(num_steps):
        mean, std = transition(k, x, deterministic)
        if not deterministic:
            eps = torch.randn_like(mean) if noise is None else noise[:, k]
        x = mean if deterministic else mean + std * eps
        log_prob = log_prob + gaussian_log_prob(x, mean, std).sum(-1)
        chain.append(x)
    return torch.stack(chain, 1), log_prob


def chain_log_prob(transition: Transition, chain: torch.Tensor) -> torch.Tensor:
    """Exact log-likelihood (B,) of a stored stochastic chain (B, K + 1, D), differentiable."""
    terms, _ = chain_log_prob_terms(transition, chain)
    return standard_normal_log_prob(chain[:, 0]) + terms.sum(-1)


def chain_log_prob_terms(
    transition: Transition, chain: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chain's per-element log-likelihood terms and the transitions' entropy.

    terms (B, K * D): log N(x^{k+1}_d; mean_k,d, std_k,d^2) for every denoising step k and
    dimension d (the x^0 term is left out: it has no parameters, so it cancels in every ratio).
    entropy (B,): sum over k and d of the Gaussian entropy 0.5 log(2 pi e std^2).
    """
    terms, entropy = [], 0.0
    for k in range(chain.shape[1] - 1):
        mean, std = transition(k, chain[:, k], False)
        terms.append(gaussian_log_prob(chain[:, k + 1], mean, std))
        entropy = entropy + (0.5 * (LOG_2PI + 1) + torch.log(std)).sum(-1)
    return torch.cat(terms, -1), entropy  # type: ignore[return-value]


def draw_candidate_noise(
    shape: tuple[int, ...], batch: int, num_candidates: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Standard-normal noise (B * K, *shape) for K candidates of B observations, rows
    observation-major (b0k0, b0k1, ...). With a `generator` it is a noise bank: K draws shared by
    every observation (TACO's fixed bank: candidate k gets the same noise at every call when the
    generator is re-seeded); without one, fresh independent draws from the global generator."""
    if generator is None:
        return torch.randn(batch * num_candidates, *shape)
    bank = torch.randn(num_candidates, *shape, generator=generator)
    return bank.repeat(batch, *([1] * len(shape)))


def sample_chain_candidates(
    transition_for: Callable[[torch.Tensor, dict], Transition],
    feature: torch.Tensor,
    num_candidates: int,
    dim: int,
    num_steps: int,
    deterministic: bool,
    generator: torch.Generator | None,
    keys: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K chains per observation from one observation encoding.

    feature (B, F): each observation's encoding, computed once and repeated for its K candidates
    (the prefix shared by all candidates). transition_for(feature (B * K, F), record) builds the
    family's transition, which stores the denoiser's hidden feature of the final step in
    record["feature"]. Returns chain (B * K, num_steps + 1, D), log-likelihood (B * K,) and the
    final-step feature (B * K, Fh), rows observation-major. With K = 1 and no generator the
    random draws are those of one plain `sample_chain` call, so `sample_actions` is this with K = 1.
    keys (B,): the rows' noise keys (vla_rl.core.noise; obs["noise_key"]): without a generator,
    every draw of row b's candidate k comes from its own stream, whatever else is in the batch.
    """
    b = len(feature)
    feature = feature.repeat_interleave(num_candidates, 0)
    noise = None
    if generator is None and keys is not None:
        x = noise_streams.standard_normal(keys, b, (dim,), "chain/x0", num_candidates)
        if not deterministic:
            shape = (num_steps, dim)
            noise = noise_streams.standard_normal(keys, b, shape, "chain/eps", num_candidates)
    else:
        x = draw_candidate_noise((dim,), b, num_candidates, generator)
        if generator is not None and not deterministic:
            noise = draw_candidate_noise((num_steps, dim), b, num_candidates, generator)
    record: dict = {}
    chain, log_prob = sample_chain(
        transition_for(feature, record), x, num_steps, deterministic, noise
    )
    return chain, log_prob, record["feature"]


def flow_transition(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], num_steps: int, std: float
) -> Transition:
    """pi0-convention flow matching as a noise-injected chain: x at t = 1 is noise, Euler steps
    of dt = -1/K towards t = 0, x_{k+1} = x_k - v(t_k, x_k) / K + std * eps with t_k = 1 - k / K.
    velocity(t (B,), x (B, D)) -> v (B, D)."""

    def transition(k: int, x: torch.Tensor, deterministic: bool):
        t = torch.full((len(x),), 1.0 - k / num_steps, device=x.device)
        mean = x - velocity(t, x).float() / num_steps
        return mean, torch.full_like(mean, std)

    return transition


class FlowChainSampling:
    """sample_actions / log_prob / log_prob_terms of the real flow VLAs (pi0, SmolVLA), mixed
    into their BasePolicy. The family supplies `_transition(obs)` (its prefix encoded once, then
    `flow_transition`), `max_action_dim` (the padded width the chain runs in) and
    `_unnormalize(chunk (B, Ta, Da))`; the chain is (B, K + 1, Ta * max_action_dim)."""

    def sample_actions(self, obs, deterministic: bool = False):
        from vla_rl.core.types import ActionSample, obs_batch_size

        b, dim = obs_batch_size(obs), self.chunk_size * self.max_action_dim
        keys = noise_streams.noise_keys(obs)
        x = noise_streams.standard_normal(keys, b, (dim,), "chain/x0", device=self.device)
        eps = None
        if keys is not None and not deterministic:
            shape = (self.num_steps, dim)
            eps = noise_streams.standard_normal(keys, b, shape, "chain/eps", device=self.device)
        chain, log_prob = sample_chain(self._transition(obs), x, self.num_steps, deterministic, eps)
        final = chain[:, -1].view(len(chain), self.chunk_size, -1)[..., : self.action_dim].cpu()
        return ActionSample(self._unnormalize(final), log_prob, {"chain": chain})

    def log_prob(self, obs, sample) -> torch.Tensor:
        return chain_log_prob(self._transition(obs), sample.extras["chain"].to(self.device))

    def log_prob_terms(self, obs, sample):
        return chain_log_prob_terms(self._transition(obs), sample.extras["chain"].to(self.device))
