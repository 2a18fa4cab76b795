"""Per-episode random streams: every draw a policy makes during a rollout comes from a stream
keyed by (run seed, task, init id, occurrence, decision step), never from the order rows share a
batch in, so an episode's outcome does not depend on the number of envs, the slot it ran in, the
worker count or what ran before it.

The rollout engine puts one key per row into the observation batch (obs["noise_key"], int64
(B,)); a policy that draws noise asks `standard_normal` / `uniform` for it, naming the draw
(`stream`), so two draws of one decision (a flow chain's initial noise and its injected noise, a
base's noise and a residual's exploration) are independent. Without keys (a caller that runs a
policy outside the engine, training's own batches) the draws come from torch's global
generator, as before.

occurrence: the k-th time the same (task, init id) appears in one run's episode list, so the
members of a GRPO group, which share their initial state, still draw different noise.
"""

from __future__ import annotations

import zlib

import torch

NOISE_KEY = "noise_key"
_MASK = (1 << 64) - 1


def _mix(*parts: int) -> int:
    """A 64-bit hash of integers (splitmix64 finalizer over a running combination): stable
    across processes and platforms, unlike Python's hash()."""
    h = 0x9E3779B97F4A7C15
    for part in parts:
        h = (h ^ (part & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & _MASK
        h ^= h >> 29
    return h


def episode_key(seed: int, task: str, init_id: int, occurrence: int) -> int:
    """The key of one episode of a run: (run seed, task name, init id, occurrence)."""
    return _mix(seed, zlib.crc32(task.encode()), init_id, occurrence)


def step_key(episode: int, decision_step: int, caller: str = "") -> int:
    """The key of one decision step of an episode, as a signed int64 (a tensor's dtype).
    caller: who queries a policy at that step, for a second policy queried inside the env
    (a residual's frozen base), so its keys are not the acting policy's."""
    h = _mix(episode, decision_step, zlib.crc32(caller.encode()))
    return h - (1 << 64) if h >= 1 << 63 else h


def derive(key: int, tag: str, index: int) -> int:
    """A key derived from `key` for the index-th of several draws a caller makes with it (K
    candidates of one observation), as a signed int64."""
    return step_key(key, index, tag)


def _generators(keys: torch.Tensor, stream: str, repeats: int) -> list[torch.Generator]:
    """One generator per (row, repeat), rows observation-major (b0r0, b0r1, ..., b1r0, ...)."""
    tag = zlib.crc32(stream.encode())
    out = []
    for key in keys.tolist():
        for r in range(repeats):
            g = torch.Generator()
            g.manual_seed(_mix(key, tag, r))
            out.append(g)
    return out


def _draw(kind, keys, batch, shape, stream, repeats, device) -> torch.Tensor:
    draw = torch.randn if kind == "normal" else torch.rand
    if keys is None:
        return draw((batch * repeats, *shape), device=device)
    keys = torch.as_tensor(keys)
    if len(keys) != batch:
        raise ValueError(f"{len(keys)} noise keys for a batch of {batch}")
    rows = [draw(shape, generator=g) for g in _generators(keys, stream, repeats)]
    return torch.stack(rows).to(device)


def standard_normal(
    keys: torch.Tensor | None,
    batch: int,
    shape: tuple[int, ...],
    stream: str,
    repeats: int = 1,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """N(0, I) noise (batch * repeats, *shape): row b * repeats + r from the stream of (keys[b],
    `stream`, r); keys None: from torch's global generator."""
    return _draw("normal", keys, batch, shape, stream, repeats, device)


def uniform(
    keys: torch.Tensor | None,
    batch: int,
    shape: tuple[int, ...],
    stream: str,
    repeats: int = 1,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """U[0, 1) noise (batch * repeats, *shape), keyed like `standard_normal`."""
    return _draw("uniform", keys, batch, shape, stream, repeats, device)


def noise_keys(obs) -> torch.Tensor | None:
    """The batch's per-row keys (B,) int64, or None outside a keyed rollout."""
    keys = obs.get(NOISE_KEY) if hasattr(obs, "get") else None
    return None if keys is None else torch.as_tensor(keys)


def gumbel(
    keys: torch.Tensor | None,
    batch: int,
    shape: tuple[int, ...],
    stream: str,
    repeats: int = 1,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard Gumbel noise -log(-log u) (batch * repeats, *shape), keyed like `uniform`:
    argmax(logits + g) samples Categorical(logits) (the Gumbel-max trick)."""
    return to_gumbel(uniform(keys, batch, shape, stream, repeats, device))


def to_gumbel(u: torch.Tensor) -> torch.Tensor:
    """U[0, 1) draws to standard Gumbel draws (clamped away from 0 and 1)."""
    return -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))


def categorical(logits: torch.Tensor, keys: torch.Tensor | None, stream: str) -> torch.Tensor:
    """A sample of Categorical(logits) over the last dim, (B, ...) -> (B, ...) indices, by the
    Gumbel-max trick on keyed noise (keys None: torch's global generator)."""
    g = gumbel(keys, logits.shape[0], tuple(logits.shape[1:]), stream, device=logits.device)
    return (logits + g).argmax(-1)
