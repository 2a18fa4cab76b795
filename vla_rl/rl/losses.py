"""The clipped policy-gradient objective shared by ppo, grpo and srpo: pure functions on tensors.

Shapes: S samples (decision steps) in a minibatch, N log-prob parts per sample (action tokens,
or (denoising step, dim) pairs of a chain), M ratios per sample (1 or N, see `reduce_terms`).
"""

from __future__ import annotations

import torch

REDUCTIONS = ("sum", "mean", "token")


def reduce_terms(terms: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-part log-probs (S, N) -> the log-probs that form ratios (S, M).

    sum:   one ratio per decision step from the summed log-prob (VLA-RL; ReinFlow/RL-100 sum a
           chain's terms): M = 1.
    mean:  one ratio per decision step from the mean over parts (DPPO means over dims and chunk
           steps; the clip range then means much more per part): M = 1.
    token: one ratio per part, averaged in the loss (siiRL's token-level ratio in SRPO): M = N.
    The reduction sets the effective clip range by orders of magnitude (methods.md section 0.1):
    log it with every result."""
    if reduction == "sum":
        return terms.sum(-1, keepdim=True)
    if reduction == "mean":
        return terms.mean(-1, keepdim=True)
    if reduction == "token":
        return terms
    raise ValueError(f"unknown log-prob reduction {reduction!r}; valid choices: {REDUCTIONS}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the entries where mask is True (broadcast); 0 for an empty mask. Masked
    entries are selected out, not multiplied by 0, so a NaN or inf there cannot leak in."""
    mask = mask.expand_as(x)
    if not mask.any():
        return x.sum() * 0.0
    return x[mask].mean()


def clipped_surrogate(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective as a loss, elementwise.

        rho = exp(clamp(log_ratio, -20, 20))
        loss = max(-A rho, -A clip(rho, 1 - clip_low, 1 + clip_high))
    with clip_low = clip_high the symmetric PPO form, and clip_high > clip_low DAPO's
    "clip-higher" (SRPO: 0.2 / 0.28). dual_clip c (siiRL default 3.0): for A < 0 the loss is
    further capped at -A c, so one very unlikely sample cannot dominate.

    log_ratio (S, M), advantages (S, 1) or (S, M). Returns (loss (S, M), clipped (S, M) bool:
    where the clipped branch was taken).
    """
    ratio = torch.exp(log_ratio.clamp(-20.0, 20.0))
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if dual_clip is not None:
        capped = torch.minimum(loss, -advantages * dual_clip)
        loss = torch.where(advantages < 0, capped, loss)
    return loss, was_clipped


def k3_kl(log_ratio: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(q || p) from samples of q, with log_ratio = log p - log q:
    exp(log_ratio) - 1 - log_ratio (non-negative, unbiased). Elementwise."""
    log_ratio = log_ratio.clamp(-20.0, 20.0)
    return torch.exp(log_ratio) - 1 - log_ratio
