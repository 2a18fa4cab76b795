"""Advantages of the on-policy methods: small pure functions, hand-checked in tests.

Shapes: T decision steps, B episodes, time-major and padded as in `Trajectories`. Episode ends
follow ChunkedEnv: a *terminated* episode (success) ends in a terminal state worth 0; a
*truncated* one (horizon) ends in an ordinary state whose value is bootstrapped.
"""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    final_values: torch.Tensor,
    valid: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over decision steps (VLA-RL, methods.md section 2.2).

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t),   A_t = delta_t + gamma * lam * A_{t+1},
    where V(s_{t+1}) after an episode's last step is 0 if it terminated and V(final obs) if it
    was truncated, and A stops at the episode's end.

    rewards, values, valid: (T, B); final_values, terminated: (B,).
    Returns (advantages (T, B), returns = advantages + values (T, B)), zero on padded steps.
    """
    num_steps = rewards.shape[0]
    valid_f = valid.float()
    end_value = torch.where(terminated, torch.zeros_like(final_values), final_values)
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(final_values)
    for t in reversed(range(num_steps)):
        next_valid = valid_f[t + 1] if t + 1 < num_steps else torch.zeros_like(final_values)
        next_v = values[t + 1] if t + 1 < num_steps else torch.zeros_like(final_values)
        # Inside an episode bootstrap from V(s_{t+1}); at its last step from its end value.
        bootstrap = next_valid * next_v + (1 - next_valid) * end_value
        delta = rewards[t] + gamma * bootstrap - values[t]
        next_adv = (delta + gamma * lam * next_valid * next_adv) * valid_f[t]
        advantages[t] = next_adv
    return advantages, (advantages + values) * valid_f


def group_advantages(scores: torch.Tensor, groups: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages: A_i = (g_i - mean_G g) / (std_G g + eps) over the episodes of i's group
    (same initial state). std is the unbiased sample std (torch's default, as the reference's
    torch.std); a group of one gets 0. scores, groups: (N,). Returns (N,)."""
    out = torch.zeros_like(scores)
    for g in groups.unique():
        members = groups == g
        values = scores[members]
        if len(values) < 2:
            continue
        out[members] = (values - values.mean()) / (values.std() + eps)
    return out


def groups_with_contrast(
    success: torch.Tensor, groups: torch.Tensor, low: float, high: float
) -> torch.Tensor:
    """DAPO-style dynamic sampling (methods.md section 1.4): keep a group only if its success rate
    lies in [low, high]; all-success and all-failure groups have zero GRPO advantage anyway.
    Returns a (N,) bool mask over episodes."""
    keep = torch.zeros_like(success, dtype=torch.bool)
    for g in groups.unique():
        members = groups == g
        rate = success[members].float().mean()
        if low <= rate <= high:
            keep |= members
    return keep


def failure_groups_with_spread(
    scores: torch.Tensor, success: torch.Tensor, groups: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Groups without a single success whose rollout scores still differ (more than eps):
    the all-failure groups `groups_with_contrast` drops, which a dense score (SRPO's progress)
    can still rank. Under the sparse success reward they all score 0 and none is returned.
    scores, success, groups (N,); returns a (N,) bool mask over episodes."""
    keep = torch.zeros_like(success, dtype=torch.bool)
    for g in groups.unique():
        members = groups == g
        if not success[members].any() and scores[members].max() - scores[members].min() > eps:
            keep |= members
    return keep
