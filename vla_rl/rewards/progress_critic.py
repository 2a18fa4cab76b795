"""Progress critics (VLAC-style, ../shared/reference/critics.md sections 1 and 4.1): a model that
compares two frames of an episode and says how far the second is from the first toward the task.

A subclass implements two batched primitives; `ProgressCritic` builds the public calls on them:
* `delta(frames_a, frames_b, instruction) -> (N,)` in [-1, 1], VLAC's pair semantics: d > 0 is
  the fraction of the *remaining* progress that b gained over a, d < 0 the fraction of the
  *achieved* progress that b lost. So from a at progress p, b sits at `progress_update(p, d)`.
* `done(frames, instruction) -> (N,)` in [0, 1]: the probability that the task is complete.
* `progress(frames, instruction, mode) -> (T,)` in [0, 1] for one episode, progress[0] = 0:
  "anchored" scores every frame against the first (with p_0 = 0 the delta *is* the progress, so
  errors do not accumulate: the potential that reward shaping uses); "chained" accumulates
  consecutive deltas (VLAC's value chain, for parity with the paper's VOC numbers).

Every call runs under no_grad, in chunks of `batch_size` queries moved to the critic's device,
and returns CPU float32. Answers are cached by (frame bytes, frame bytes, instruction), so
reward shaping, logging and evaluation that ask the same question pay for it once.
Shapes: N queries (frame pairs or frames), T frames of one episode, H, W image size.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch

MODES = ("anchored", "chained")

Frames = np.ndarray | torch.Tensor
"""uint8 RGB frames (N, H, W, 3), numpy or torch, on any device."""


def progress_update(progress: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Progress after a step of `delta` from `progress` (elementwise, VLAC's update rule):
    p + d (1 - p) for d >= 0 (gains d of the remaining), p + d p for d < 0 (loses |d| of the
    achieved), clipped to [0, 1] against float rounding.

    A step forward and its reverse pair cancel exactly: from p, d = +0.5 reaches q = p + 0.5(1-p),
    and the reverse delta -(q - p)/q brings q back to p. VLAC's `critic_to_value_simple` applies
    the d >= 0 formula to every d; the d < 0 branch is critics.md section 4.1's, which keeps the
    result in [0, 1] for every d in [-1, 1].
    """
    step = torch.where(delta >= 0, 1 - progress, progress)
    return (progress + delta * step).clamp(0.0, 1.0)


def chain_progress(deltas: torch.Tensor) -> torch.Tensor:
    """Per-frame progress (T,) from the T - 1 consecutive deltas (T-1,) of an episode,
    starting at 0 and applying `progress_update` frame by frame (VLAC's chained value)."""
    values = [torch.zeros((), dtype=torch.float32)]
    for d in deltas.float():
        values.append(progress_update(values[-1], d))
    return torch.stack(values)


def _as_frames(frames: Frames, name: str) -> torch.Tensor:
    """`frames` as a contiguous CPU uint8 tensor (N, H, W, 3); a one-line ValueError otherwise."""
    if not isinstance(frames, (np.ndarray, torch.Tensor)):
        raise ValueError(f"{name}: expected a numpy array or torch tensor, got {type(frames)}")
    uint8 = frames.dtype == (torch.uint8 if isinstance(frames, torch.Tensor) else np.uint8)
    if not uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"{name}: expected uint8 RGB frames (N, H, W, 3), got {frames.dtype} "
            f"{tuple(frames.shape)}"
        )
    if isinstance(frames, torch.Tensor):
        return frames.detach().cpu().contiguous()
    # A copy only where needed: strided views, read-only arrays (torch warns on those) and
    # negative strides (a one-frame slice of a reversed view counts as contiguous to numpy,
    # but torch.from_numpy refuses it).
    if not frames.flags.writeable or any(stride < 0 for stride in frames.strides):
        return torch.from_numpy(frames.copy())
    return torch.from_numpy(np.ascontiguousarray(frames))


def _as_instructions(instruction: str | Sequence[str], n: int) -> list[str]:
    """One instruction per query: a str is shared by all n, a sequence must hold exactly n."""
    if isinstance(instruction, str):
        return [instruction] * n
    instructions = list(instruction)
    if len(instructions) != n or not all(isinstance(s, str) for s in instructions):
        raise ValueError(
            f"expected one str instruction, or a list of {n} str (one per query), got "
            f"{len(instructions)} items"
        )
    return instructions


def _frame_hashes(frames: torch.Tensor) -> list[bytes]:
    """A digest of each frame's shape and bytes (N,): the cache key of an image."""
    shape = str(tuple(frames.shape[1:])).encode()  # equal bytes in another shape differ
    digests = []
    for frame in frames.numpy():
        digest = hashlib.blake2b(shape, digest_size=16)
        digest.update(frame)  # a C-contiguous row: hashed in place, no copy
        digests.append(digest.digest())
    return digests


class ProgressCritic(ABC):
    """Base of the progress critics: subclasses implement `_delta_batch` and `_done_batch` on at
    most `batch_size` queries that already sit on `device`; this class validates inputs,
    batches, caches, and brings results back to the CPU.

    batch_size: queries per primitive call. 32: Robometer's VLAC wrapper (critics.md 1.5); set it
        to what fits the accelerator's memory.
    cache_size: answers kept (least recently used dropped first); 0 turns the cache off. 4096
        pairs hold e.g. 16 envs x 256 decision steps of one rollout's shaping, read again by
        logging and evaluation.
    device: where the primitives receive their frames (a subclass that moves its weights
        updates `self.device`).
    """

    def __init__(
        self, batch_size: int = 32, cache_size: int = 4096, device: str | torch.device = "cpu"
    ):
        if batch_size < 1 or cache_size < 0:
            raise ValueError(
                f"need batch_size >= 1 and cache_size >= 0, got {batch_size}, {cache_size}"
            )
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.device = torch.device(device)
        self._cache: OrderedDict[tuple, float] = OrderedDict()
        self.cache_hits = 0
        """Queries answered without a primitive call (from the cache or a repeat in one call)."""
        self.cache_misses = 0
        """Distinct queries sent to a primitive."""

    # ---- the primitives a subclass implements --------------------------------------------

    @abstractmethod
    def _delta_batch(
        self, frames_a: torch.Tensor, frames_b: torch.Tensor, instructions: list[str]
    ) -> torch.Tensor:
        """Deltas (n,) in [-1, 1] of frames_b over frames_a, both uint8 (n, H, W, 3) on
        `self.device`, n <= batch_size, one instruction per pair."""

    @abstractmethod
    def _done_batch(self, frames: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """Done probabilities (n,) in [0, 1] of uint8 frames (n, H, W, 3) on `self.device`."""

    # ---- public calls ---------------------------------------------------------------------

    @torch.no_grad()
    def delta(
        self, frames_a: Frames, frames_b: Frames, instruction: str | Sequence[str]
    ) -> torch.Tensor:
        """Deltas (N,) in [-1, 1], CPU float32: how far each frames_b[i] moved toward the task
        from frames_a[i] (> 0: the fraction of the remaining progress gained; < 0: the fraction
        of the achieved progress lost). frames_a, frames_b uint8 (N, H, W, 3); instruction: one
        str for all pairs or N of them."""
        a, b = _as_frames(frames_a, "frames_a"), _as_frames(frames_b, "frames_b")
        if a.shape != b.shape:
            raise ValueError(
                f"frames_a and frames_b must have the same shape, got {tuple(a.shape)} and "
                f"{tuple(b.shape)}"
            )
        instructions = _as_instructions(instruction, len(a))
        return self._deltas(a, b, _frame_hashes(a), _frame_hashes(b), instructions)

    @torch.no_grad()
    def done(self, frames: Frames, instruction: str | Sequence[str]) -> torch.Tensor:
        """Done probabilities (N,) in [0, 1], CPU float32, of uint8 frames (N, H, W, 3);
        instruction: one str for all frames or N of them."""
        x = _as_frames(frames, "frames")
        instructions = _as_instructions(instruction, len(x))
        keys = [("done", h, s) for h, s in zip(_frame_hashes(x), instructions)]

        def compute(rows: list[int]) -> torch.Tensor:
            out = self._done_batch(x[rows].to(self.device), [instructions[r] for r in rows])
            return self._checked(out, len(rows), 0.0, "_done_batch")

        return self._answer(keys, compute)

    @torch.no_grad()
    def progress(self, frames: Frames, instruction: str, mode: str = "anchored") -> torch.Tensor:
        """Per-frame progress (T,) in [0, 1] of one episode, CPU float32, progress[0] = 0.

        frames: uint8 (T, H, W, 3), T >= 1, in time order; instruction: the episode's task.
        mode: "anchored" (progress_t = update(0, delta(frame_0, frame_t)): one pair per frame,
            no accumulated error; the shaping potential) or "chained" (VLAC's form, for parity:
            consecutive deltas delta(frame_t-1, frame_t) chained with `progress_update`).
        """
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}; valid choices: {', '.join(MODES)}")
        x = _as_frames(frames, "frames")
        if not isinstance(instruction, str):
            raise ValueError(
                f"progress scores one episode: instruction must be a str, got {type(instruction)}"
            )
        if len(x) == 0:
            raise ValueError("frames must hold at least one frame (T >= 1)")
        hashes = _frame_hashes(x)  # each frame hashed once, whichever pairs it is in
        n = len(x) - 1
        instructions = [instruction] * n
        if mode == "anchored":
            first = x[:1].expand(n, *x.shape[1:])
            deltas = self._deltas(first, x[1:], hashes[:1] * n, hashes[1:], instructions)
            later = progress_update(torch.zeros(n), deltas)  # from p_0 = 0: max(d, 0)
            return torch.cat([torch.zeros(1), later])
        deltas = self._deltas(x[:-1], x[1:], hashes[:-1], hashes[1:], instructions)
        return chain_progress(deltas)

    def cache_info(self) -> dict[str, int]:
        """Counts for logs and tests: hits, misses, and answers currently cached."""
        return {"hits": self.cache_hits, "misses": self.cache_misses, "size": len(self._cache)}

    def clear_cache(self) -> None:
        """Forget every answer (e.g. after the critic's weights change) and reset the counts."""
        self._cache.clear()
        self.cache_hits = self.cache_misses = 0

    # ---- internals ------------------------------------------------------------------------

    def _deltas(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        hashes_a: list[bytes],
        hashes_b: list[bytes],
        instructions: list[str],
    ) -> torch.Tensor:
        """`delta` on validated CPU frames whose hashes are already known."""
        keys = [("delta", ha, hb, s) for ha, hb, s in zip(hashes_a, hashes_b, instructions)]

        def compute(rows: list[int]) -> torch.Tensor:
            a_rows, b_rows = a[rows].to(self.device), b[rows].to(self.device)
            out = self._delta_batch(a_rows, b_rows, [instructions[r] for r in rows])
            return self._checked(out, len(rows), -1.0, "_delta_batch")

        return self._answer(keys, compute)

    def _answer(
        self, keys: list[tuple], compute: Callable[[list[int]], torch.Tensor]
    ) -> torch.Tensor:
        """Values (N,) for N query keys: cached ones from the cache, each distinct other one
        computed once (`compute(rows)` on at most batch_size rows at a time) and cached."""
        out = torch.empty(len(keys), dtype=torch.float32)
        todo: dict[tuple, list[int]] = {}  # distinct uncached key -> the rows asking it
        for i, key in enumerate(keys):
            if key in self._cache:
                self._cache.move_to_end(key)  # least recently used is evicted first
                out[i] = self._cache[key]
                self.cache_hits += 1
            elif key in todo:
                todo[key].append(i)
                self.cache_hits += 1
            else:
                todo[key] = [i]
                self.cache_misses += 1
        pending = list(todo)
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            values = compute([todo[key][0] for key in chunk])
            for key, value in zip(chunk, values.tolist()):
                out[todo[key]] = value
                self._remember(key, value)
        return out

    def _remember(self, key: tuple, value: float) -> None:
        self._cache[key] = value  # cache_size 0: dropped again at once
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _checked(self, values: torch.Tensor, n: int, low: float, name: str) -> torch.Tensor:
        """A primitive's output as CPU float32 (n,) in [low, 1]. Out of range by more than float
        rounding is a bug in the subclass (e.g. VLAC's percent answers not divided by 100)."""
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != (n,):
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values)
            raise ValueError(
                f"{type(self).__name__}.{name} returned {shape}, expected shape ({n},)"
            )
        values = values.detach().float().cpu()
        if not torch.isfinite(values).all() or values.min() < low - 1e-4 or values.max() > 1 + 1e-4:
            raise ValueError(
                f"{type(self).__name__}.{name} returned values outside [{low:g}, 1]: "
                f"{values.min().item():.4g} .. {values.max().item():.4g}"
            )
        return values.clamp(low, 1.0)
