"""Saving evaluation episodes as MP4 videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla_rl.io.atomic import atomic_file


def save_video(path: str | Path, frames: list[np.ndarray], fps: int = 20) -> None:
    """Write frames (each H x W x 3 uint8) as an H.264 MP4, atomically."""
    import imageio.v2 as imageio

    with atomic_file(path) as tmp:
        # macro_block_size=1: keep odd sizes as they are instead of resizing with a warning.
        with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1) as writer:
            for frame in frames:
                writer.append_data(np.asarray(frame, dtype=np.uint8))
