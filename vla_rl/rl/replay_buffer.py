"""A fixed-capacity ring buffer of n-step transitions, stored as numpy arrays.

Each row is one n-step transition (see `vla_rl.rl.returns.n_step_returns`): the fields are given
when the buffer is made (name -> per-row shape and dtype), so the buffer knows nothing about
what a method stores. Sampling is uniform over the rows written so far.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CURSOR_KEY = "_cursor"  # the saved cursor's name beside the fields' (no field may take it)


class ReplayBuffer:
    def __init__(self, capacity: int, fields: dict[str, tuple[tuple[int, ...], type]]):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if CURSOR_KEY in fields:
            raise ValueError(f"{CURSOR_KEY!r} is reserved for the saved cursor; rename the field")
        self.capacity = capacity
        self.data = {
            name: np.zeros((capacity, *shape), dtype=dtype)
            for name, (shape, dtype) in fields.items()
        }
        self.size = 0  # rows holding data
        self.cursor = 0  # next row to write (the oldest row once full)

    def __len__(self) -> int:
        return self.size

    def add(self, rows: dict[str, np.ndarray]) -> None:
        """Append N rows (every field with leading dim N); the oldest rows are overwritten."""
        lengths = {len(v) for v in rows.values()}
        if len(lengths) != 1 or set(rows) != set(self.data):
            raise ValueError(f"add needs every field {sorted(self.data)} with one length")
        n = lengths.pop()
        idx = (self.cursor + np.arange(n)) % self.capacity
        for name, value in rows.items():
            self.data[name][idx] = value
        self.cursor = int((self.cursor + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.size == 0:
            raise ValueError("cannot sample from an empty buffer")
        idx = rng.integers(self.size, size=batch_size)
        return {name: value[idx] for name, value in self.data.items()}

    # ---- persistence (the online buffer is saved with every checkpoint) -----------------------
    # One safetensors file: the rows written so far, one array per field, plus the cursor as a
    # 0-d int64 under CURSOR_KEY. Raw arrays only, so loading a buffer cannot run code.
    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        arrays = {name: value[: self.size] for name, value in self.data.items()}
        save_file({**arrays, CURSOR_KEY: np.array(self.cursor, np.int64)}, str(path))

    def load(self, path: str | Path) -> None:
        from safetensors.numpy import load_file

        saved = load_file(str(path))
        missing = sorted(set(self.data) - set(saved))
        if missing or CURSOR_KEY not in saved:
            raise ValueError(f"{path}: saved buffer lacks {missing or [CURSOR_KEY]}")
        size = len(saved[next(iter(self.data))])
        if size > self.capacity:
            raise ValueError(f"saved buffer holds {size} rows; capacity is {self.capacity}")
        for name in self.data:
            self.data[name][:size] = saved[name]
        self.size = size
        self.cursor = int(saved[CURSOR_KEY]) % self.capacity


def sample_mixed(
    online: ReplayBuffer,
    demos: ReplayBuffer | None,
    batch_size: int,
    demo_fraction: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """A batch with round(demo_fraction * batch_size) demo rows and the rest online (RLPD's
    symmetric sampling when demo_fraction = 0.5); all online when there are no demos."""
    n_demo = int(round(demo_fraction * batch_size)) if demos is not None and len(demos) else 0
    parts = [online.sample(batch_size - n_demo, rng)]
    if n_demo:
        parts.append(demos.sample(n_demo, rng))  # type: ignore[union-attr]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
