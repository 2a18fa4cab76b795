"""BatchedSlotEnv: a SlotEnv whose B slots are stepped together by one in-process object.

The process-pool env (`vla_rl.rollout.local`) hosts one simulator per slot in worker processes.
A learned simulator (a video world model on a GPU) is the opposite: one model advances every
slot in one batched forward pass, in the calling process. This base class turns such a model
into a `SlotEnv` the rollout engine runs unchanged. A subclass implements two batched calls:

    reset_batch(slots, episodes) -> obs          obs: dict of arrays with N = len(slots) rows
    step_batch(slots, actions)   -> obs, rewards (N,), success (N,)   actions (N, Da): ONE env step

and this class executes chunks with the same episode-end rules as `ChunkedEnv`
(vla_rl/rollout/chunked_env.py): success is sticky and terminates; the horizon (the task's
max_steps, or EnvConfig.max_steps) truncates; a chunk stops at the first step that ends its
episode; there is no autoreset. A model that predicts a whole chunk at once overrides
`step_chunks` instead of `step_batch`.

Every slot runs its own episode: the rows passed to `step_batch` are only the slots still
running, in the order given. `step_async` does the work (a GPU model would queue it on its
stream) and `step_wait` returns it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from vla_rl.core.benchmark import EpisodeSpec
from vla_rl.core.slots import SlotStep, slot_observations
from vla_rl.core.types import Observation


class BatchedSlotEnv(ABC):
    """B slots stepped by batched calls of one object (see the module docstring)."""

    def __init__(self, num_envs: int, action_space: gym.spaces.Box, max_steps: int | None = None):
        """max_steps: horizon override in env steps (EnvConfig.max_steps); None: each task's."""
        self.num_envs = num_envs
        self.single_action_space = action_space
        self.max_steps = max_steps
        self.episodes: list[EpisodeSpec | None] = [None] * num_envs
        self._obs: list[dict[str, np.ndarray] | None] = [None] * num_envs
        self._elapsed = np.zeros(num_envs, dtype=np.int64)  # env steps of the running episode
        self._done = np.ones(num_envs, dtype=bool)
        self._record: list[bool | str] = [False] * num_envs

    # ---- what a subclass implements ------------------------------------------------------------
    @abstractmethod
    def reset_batch(
        self, slots: Sequence[int], episodes: Sequence[EpisodeSpec]
    ) -> dict[str, np.ndarray]:
        """Start `episodes` in `slots`; the first observations, N = len(slots) rows each."""

    @abstractmethod
    def step_batch(
        self, slots: Sequence[int], actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """One env step of `slots` with actions (N, Da): (obs with N rows, rewards (N,),
        success (N,) bool at this step)."""

    def render_batch(self, slots: Sequence[int]) -> np.ndarray | None:
        """Video frames (N, H, W, 3) uint8 of `slots` now, or None if this env renders none."""
        return None

    # ---- chunk execution with ChunkedEnv's episode-end rules -----------------------------------
    def step_chunks(self, slots: Sequence[int], chunks: np.ndarray) -> list[SlotStep]:
        """Execute one chunk (Ta, Da) per slot, batched over the slots still running."""
        slots = list(slots)
        n, ta = len(slots), chunks.shape[1]
        rewards = np.zeros((n, ta), dtype=np.float32)
        steps = np.zeros(n, dtype=np.int64)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        frames: list[list[np.ndarray]] = [[] for _ in slots]
        running = np.ones(n, dtype=bool)
        for k in range(ta):
            rows = np.flatnonzero(running)
            if len(rows) == 0:
                break
            active = [slots[i] for i in rows]
            obs, reward, success = self.step_batch(active, chunks[rows, k])
            want = [i for i in rows if self._record[slots[i]] is True]
            shots = self.render_batch([slots[i] for i in want]) if want else None
            for j, i in enumerate(rows):
                slot = slots[i]
                self._obs[slot] = {key: value[j] for key, value in obs.items()}
                rewards[i, k] = reward[j]
                steps[i] += 1
                self._elapsed[slot] += 1
                # As ChunkedEnv: both can hold when success comes on the horizon's last step.
                terminated[i] = bool(success[j])
                truncated[i] = self._elapsed[slot] >= self._horizon(slot)
                running[i] = not (terminated[i] or truncated[i])
            if shots is not None:
                for j, i in enumerate(want):
                    frames[i].append(shots[j])
        return self.finish_chunks(slots, rewards, steps, terminated, truncated, frames)

    def finish_chunks(
        self,
        slots: list[int],
        rewards: np.ndarray,
        steps: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        frames: list[list[np.ndarray]],
    ) -> list[SlotStep]:
        """The end of a `step_chunks` (this class's or a subclass's): the chunk-end frame of the
        slots recording one per chunk, each slot's episode-end flag, and its SlotStep.
        rewards (N, Ta), steps (N,), terminated / truncated (N,) bool; frames: per slot, the
        frames rendered during the chunk (appended to)."""
        chunk_end = [i for i, s in enumerate(slots) if self._record[s] == "chunk"]
        shots = self.render_batch([slots[i] for i in chunk_end]) if chunk_end else None
        if shots is not None:
            for j, i in enumerate(chunk_end):
                frames[i].append(shots[j])
        out = []
        for i, slot in enumerate(slots):
            self._done[slot] = terminated[i] or truncated[i]
            out.append(SlotStep(
                obs=self._obs[slot], rewards=rewards[i, : steps[i]], steps=int(steps[i]),
                terminated=bool(terminated[i]), truncated=bool(truncated[i]),
                success=bool(terminated[i]), frames=frames[i] or None,
            ))  # fmt: skip
        return out

    def _horizon(self, slot: int) -> int:
        episode = self.episodes[slot]
        return self.max_steps or episode.task.max_steps  # type: ignore[union-attr]

    # ---- the SlotEnv protocol ------------------------------------------------------------------
    def reset_slots(
        self,
        slots: Sequence[int],
        episodes: Sequence[EpisodeSpec],
        record: Sequence[bool | str | int] | None = None,
    ) -> list[list[np.ndarray] | None]:
        slots = list(slots)
        record = list(record) if record is not None else [False] * len(slots)
        obs = self.reset_batch(slots, episodes)
        for j, (slot, episode, rec) in enumerate(zip(slots, episodes, record)):
            self.episodes[slot] = episode
            self._obs[slot] = {key: value[j] for key, value in obs.items()}
            self._elapsed[slot] = 0
            self._done[slot] = False
            # F sampled frames: one per chunk here; the engine keeps the F (it always selects)
            self._record[slot] = "chunk" if type(rec) is int else rec
        recording = [j for j, rec in enumerate(record) if rec]
        shots = self.render_batch([slots[j] for j in recording]) if recording else None
        first: list[list[np.ndarray] | None] = [None] * len(slots)
        if shots is not None:
            for k, j in enumerate(recording):
                first[j] = [shots[k]]
        return first

    def observe(self, slots: Sequence[int]) -> Observation:
        return slot_observations(slots, self.episodes, self._obs)

    def step_async(self, slots: Sequence[int], chunks: np.ndarray) -> list[SlotStep]:
        ended = [s for s in slots if self._done[s]]
        if ended:  # no autoreset, as ChunkedEnv
            raise RuntimeError(f"slots {ended} have ended their episodes; reset them first")
        return self.step_chunks(slots, np.asarray(chunks, dtype=np.float32))

    def step_wait(self, handle: Any) -> list[SlotStep]:
        return handle

    def call(self, name: str, *args: Any) -> list[Any]:
        raise NotImplementedError(f"{type(self).__name__} has no per-slot envs to call {name!r}")

    def close(self) -> None:  # noqa: B027 (a model with devices or files to release overrides it)
        """Nothing to release by default."""
