"""Return targets shared by the value-based methods: small pure functions, hand-checked in tests.

Episode-end semantics follow ChunkedEnv: an episode that *terminated* (succeeded) ends in a
terminal state whose value is 0, so nothing is bootstrapped past it; an episode that was
*truncated* by the horizon ends in an ordinary state, so its value is bootstrapped.
"""

from __future__ import annotations

import numpy as np


def n_step_returns(
    rewards: np.ndarray, terminated: bool, n: int, gamma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n-step targets for every step of one finished episode of L steps.

    For step t, with k = min(n, L - t) rewards left before the episode's end:
        return_t    = sum_{i < k} gamma^i r_{t+i}
        next_t      = t + k, the index (0..L) of the state to bootstrap from (L = the final state)
        discount_t  = gamma^k, or 0 when next_t == L and the episode terminated,
    so the critic target is return_t + discount_t * Q'(s_{next_t}, a'_{next_t}).

    rewards: (L,). Returns (returns (L,) float32, next (L,) int64, discounts (L,) float32).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rewards = np.asarray(rewards, dtype=np.float64)
    length = len(rewards)
    t = np.arange(length)
    k = np.minimum(n, length - t)
    returns = np.zeros(length)
    for i in range(n):  # add gamma^i r_{t+i} where t + i is still inside the episode
        inside = i < k
        returns[inside] += gamma**i * rewards[t[inside] + i]
    nxt = t + k
    discounts = gamma ** k.astype(np.float64)
    if terminated:
        discounts[nxt == length] = 0.0
    return returns.astype(np.float32), nxt.astype(np.int64), discounts.astype(np.float32)
