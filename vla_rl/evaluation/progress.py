"""Progress bars for long work: rate and ETA, plus a running success rate."""

from __future__ import annotations

import sys
from collections.abc import Callable

from vla_rl.core.trajectories import EpisodeRecord


def episode_progress(total: int, desc: str, enabled: bool = True):
    """A tqdm bar over episodes and the `on_episode_end` callback that advances it.

    Returns (bar or None, callback). The bar shows episodes/s, the ETA and the success rate so far;
    it redraws at most every 5 s when stderr is not a terminal, to keep log files short.
    """
    counts = {"done": 0, "succ": 0}
    bar = None
    if enabled:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total,
            unit="ep",
            desc=desc,
            smoothing=0.1,
            mininterval=0.1 if sys.stderr.isatty() else 5.0,
        )

    def on_end(record: EpisodeRecord) -> None:
        counts["done"] += 1
        counts["succ"] += int(record.success)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(success=f"{counts['succ'] / counts['done']:.2f}")

    callback: Callable[[EpisodeRecord], None] = on_end
    return bar, callback
