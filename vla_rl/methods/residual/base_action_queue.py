"""BaseActionQueue: runs a frozen base policy's action chunks open-loop, one env step at a time.

A residual policy corrects every control step *inside* the base policy's chunk, so the base's
chunk cannot be sent to the env whole. This wrapper keeps, per env slot, the queue of base
actions still to execute (the chunk the base predicted when its queue last ran out), and adds the
head of the queue to every observation as `obs["base_action"]` (B, Da). The policy acting on
these observations sends one action per slot; stepping pops one base action per executed step.

Keeping the queue here, beside the env, keeps policies stateless (DESIGN.md): a ResidualPolicy's
action depends only on its observation, base action included, so evaluation, rollouts and
re-scoring work unchanged. It wraps any `SlotEnv` in the main process (where the base policy's
weights live) and is one itself: the protocol's other members are forwarded as they are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from vla_rl.core.benchmark import EpisodeSpec
from vla_rl.core.noise import NOISE_KEY, step_key
from vla_rl.core.policy import BasePolicy
from vla_rl.core.slots import SlotEnv, SlotStep
from vla_rl.core.types import Observation, index_obs


class BaseActionQueue:
    """A `SlotEnv` over `venv` whose observations carry the base action of every slot."""

    def __init__(self, venv: SlotEnv, base: BasePolicy, deterministic: bool = True):
        """deterministic: query the base with its deterministic action (greedy / mean), as a
        frozen BC policy is deployed; the residual supplies the exploration."""
        self.venv = venv
        self.base = base
        self.deterministic = deterministic
        self.queues: list[deque[np.ndarray]] = [deque() for _ in range(venv.num_envs)]
        self.chunks = [0] * venv.num_envs  # base chunks queried in each slot's episode so far
        self.base_calls = 0  # times the base policy was queried (for tests and timing)

    # ---- forwarded unchanged: the queue changes what is observed and stepped, nothing else ----
    @property
    def num_envs(self) -> int:
        return self.venv.num_envs

    @property
    def single_action_space(self) -> gym.spaces.Box:
        return self.venv.single_action_space

    @property
    def episodes(self) -> list[EpisodeSpec | None]:
        return self.venv.episodes

    def call(self, name: str, *args: Any) -> list[Any]:
        return self.venv.call(name, *args)

    def close(self) -> None:
        self.venv.close()

    # ---- the queue ------------------------------------------------------------------------------

    def reset_slots(
        self,
        slots: Sequence[int],
        episodes: Sequence[EpisodeSpec],
        record: Sequence[bool | str] | None = None,
    ) -> list[list[np.ndarray] | None]:
        for slot in slots:  # a new episode starts a new base chunk
            self.queues[slot].clear()
            self.chunks[slot] = 0
        return self.venv.reset_slots(slots, episodes, record)

    def observe(self, slots: Sequence[int]) -> Observation:
        """The slots' observations plus "base_action" (B, Da): the next base action of each,
        querying the base (one batched call) for the slots whose queue has run out."""
        obs = self.venv.observe(slots)
        empty = [row for row, slot in enumerate(slots) if not self.queues[slot]]
        if empty:
            base_obs = index_obs(obs, empty)
            specs = [self.venv.episodes[slots[row]] for row in empty]
            if all(spec is not None and spec.noise_key is not None for spec in specs):
                # The base's draws keyed by its episode and its own chunk count (vla_rl.core.noise)
                base_obs[NOISE_KEY] = np.array(  # type: ignore[typeddict-unknown-key]
                    [step_key(spec.noise_key, self.chunks[slots[row]], "base")
                     for spec, row in zip(specs, empty)], dtype=np.int64,
                )  # fmt: skip
            with torch.no_grad():
                chunks = self.base.sample_actions(base_obs, self.deterministic)
            self.base_calls += 1
            for row in empty:
                self.chunks[slots[row]] += 1
            for row, chunk in zip(empty, chunks.actions.cpu().numpy()):
                self.queues[slots[row]].extend(chunk.astype(np.float32))
        obs["base_action"] = np.stack([self.queues[slot][0] for slot in slots])  # type: ignore[typeddict-unknown-key]
        return obs

    def step_async(self, slots: Sequence[int], chunks: np.ndarray) -> Any:
        """Send one chunk per slot (normally of one action); each executed action uses up one
        base action (a chunk that ends the episode early does not matter: reset clears it)."""
        for slot, chunk in zip(slots, chunks):
            queue = self.queues[slot]
            for _ in range(min(len(chunk), len(queue))):
                queue.popleft()
        return self.venv.step_async(slots, chunks)

    def step_wait(self, ticket: Any) -> list[SlotStep]:
        return self.venv.step_wait(ticket)
