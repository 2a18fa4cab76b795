"""The env-slot protocol: the interface the rollout engine, evaluation and the methods use to run
episodes, whatever steps them.

B env slots, each running one episode at a time. The caller decides which episode every slot
runs next (any task of the benchmark, any initial state), steps any subset of slots one action
chunk at a time, and is told per slot how the chunk went. Two implementations ship:

* `vla_rl.rollout.local.ChunkedVectorEnv`: one gym env per slot in worker processes (the
  simulators), `step_async` sends the chunks and returns at once, `step_wait` collects;
* `vla_rl.rollout.batched.BatchedSlotEnv`: one in-process object that steps all its slots in one
  batched call (a video world model on a GPU); `step_async` does the work.

A benchmark's `make_env` may return either, or anything else that satisfies `SlotEnv`; a backend
(`--env.backend`, the BACKENDS registry) decides how a benchmark's per-slot gym envs are hosted.
Episode-end rules are those of `vla_rl.rollout.chunked_env`: success is sticky and ends the
episode with `terminated`; the horizon ends it with `truncated`; there is no autoreset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from vla_rl.core.types import EpisodeSpec, Observation, stack_obs


class WorkerError(RuntimeError):
    """What hosts an env failed in a way the run cannot recover from (an exception inside a
    worker, with its traceback; a worker that keeps dying or hanging; an episode whose env
    keeps being lost). The CLI prints it as one line."""


@dataclass
class SlotStep:
    """What one slot reports after executing one chunk."""

    obs: dict[str, np.ndarray]  # the observation after the chunk (state (Ds,), image, ...)
    rewards: np.ndarray  # (steps,) the env's reward per executed env step
    steps: int  # env steps executed (1..Ta; fewer when the episode ended inside the chunk)
    terminated: bool  # reached success (terminal state: no bootstrap)
    truncated: bool  # hit the horizon (not terminal: value methods bootstrap)
    success: bool
    frames: list[np.ndarray] | None  # video frames (H, W, 3) rendered during the chunk
    lost: bool = False
    """The slot's env was lost with its worker (it died or hung, and was restarted): the other
    fields mean nothing, the episode must be run again from its initial state (or dropped),
    and the slot must be reset before it steps again."""

    @classmethod
    def lost_slot(cls) -> SlotStep:
        return cls({}, np.zeros(0, dtype=np.float32), 0, False, False, False, None, lost=True)


@runtime_checkable
class SlotEnv(Protocol):
    """B slots that reset into given episodes and step one chunk at a time, asynchronously."""

    num_envs: int
    """B, the number of slots."""
    single_action_space: gym.spaces.Box
    """One env step's action space (Da,), in env units."""
    episodes: list[EpisodeSpec | None]
    """The episode each slot is running (None before its first reset)."""

    def reset_slots(
        self,
        slots: Sequence[int],
        episodes: Sequence[EpisodeSpec],
        record: Sequence[bool | str | int] | None = None,
    ) -> list[list[np.ndarray] | None]:
        """Reset each of `slots` into the matching episode. record, per slot: False, True (a
        video frame per env step), "chunk" (one per chunk) or an int F (F of the per-chunk
        frames, uniformly spread: vla_rl/rollout/frames.py; an env may return them all, or only
        those at the episode's end). Returns the first frames (or None) per slot."""
        ...

    def observe(self, slots: Sequence[int]) -> Observation:
        """The current observation batch of `slots` (B' rows), with "instruction" and "task"."""
        ...

    def step_async(self, slots: Sequence[int], chunks: np.ndarray) -> Any:
        """Start executing one chunk (Ta, Da) per slot; chunks is (len(slots), Ta, Da). Returns a
        handle for `step_wait`; the caller may do other work (infer other slots) meanwhile."""
        ...

    def step_wait(self, handle: Any) -> list[SlotStep]:
        """The results of a `step_async`, in the order of its slots."""
        ...

    def call(self, name: str, *args: Any) -> list[Any]:
        """Call a method of every slot's underlying env; results in slot order (diagnostics)."""
        ...

    def close(self) -> None:
        """Release workers, renderers and devices; idempotent."""
        ...


def step_slots(env: SlotEnv, slots: Sequence[int], chunks: np.ndarray) -> list[SlotStep]:
    """Execute one chunk per slot and wait for the results (the synchronous form)."""
    return env.step_wait(env.step_async(slots, chunks))


def slot_observations(
    slots: Sequence[int],
    episodes: Sequence[EpisodeSpec | None],
    last_obs: Sequence[dict[str, np.ndarray] | None],
) -> Observation:
    """`observe` for an implementation that keeps each slot's episode and last observation:
    the batch of `slots` (B' rows) with each episode's instruction and task name."""
    items = []
    for slot in slots:
        episode, obs = episodes[slot], last_obs[slot]
        if episode is None or obs is None:
            raise RuntimeError(f"slot {slot} has not been reset")
        items.append(dict(obs, instruction=episode.task.instruction, task=episode.task.name))
    return stack_obs(items)
