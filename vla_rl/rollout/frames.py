"""Which of an episode's frames a rollout keeps when a reward reads only a few of them.

SRPO's trajectory encoder reads F frames spread uniformly over the episode (`uniform_indices`,
the released SRPO code's rule); a rollout asked for F frames keeps only those
(`kept_frames`), and an env that can snapshot what it would draw (`render_snapshot` /
`render_snapshots`, Meta-World) renders only those, after the episode, instead of one per
decision step. The kept frames are the sampled ones in order, so the encoder's sampling of the
short video is the identity and gives the frames it would have sampled from the full one.
"""

from __future__ import annotations

import numpy as np


def uniform_indices(length: int, num: int) -> np.ndarray:
    """`num` indices spread uniformly over 0..length-1 (linspace, truncated to int); when the
    episode is shorter than `num`, 0..length-1 repeated cyclically (released SRPO code)."""
    if length < 1:
        raise ValueError("cannot sample frames from an empty episode")
    if length < num:
        return np.resize(np.arange(length), num)
    return np.linspace(0, length - 1, num).astype(np.int64)


def kept_frames(length: int, num: int) -> np.ndarray:
    """The distinct frame indices `uniform_indices(length, num)` reads, ascending: `num` of them
    when length >= num (the linspace step is then >= 1), every frame otherwise. Applying it to
    its own output is the identity: kept_frames(len(k), num) == arange(len(k))."""
    return np.unique(uniform_indices(length, num))
