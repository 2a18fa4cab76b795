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

LOG_2PI = math.log(2 * math.pi)

Transition = Callable[[int, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor]]


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, std^2)."""
    return -0.5 * (((x - mean) / std) ** 2 + LOG_2PI) - torch.log(std)


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) summed over the last dim: (B,)."""
    return gaussian_log_prob(x, torch.zeros_like(x), torch.ones_like(x)).sum(-1)


def sample_chain(
    transition: Transition, x: torch.Tensor, num_steps: int, deterministic: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the chain from x = x^0; returns (chain (B, K + 1, D), log-likelihood (B,)).
    deterministic: follow the means (no noise); that chain has no usable likelihood."""
    chain = [x]
    log_prob = standard_normal_log_prob(x)
    for k in range(num_steps):
        mean, std = transition(k, x, deterministic)
        x = mean if deterministic else mean + std * torch.randn_like(mean)
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
