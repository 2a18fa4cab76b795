"""Episodes in progress at a checkpoint, saved so that a resumed residual run continues them
exactly instead of dropping them (issue 16: a run killed at any moment and resumed ends with the
weights of the run left alone).

What a slot's episode needs to go on as if nothing happened: its episode (task, initial state),
the env actions it has executed (replayed into a fresh env they rebuild the simulator's state
bit for bit: the simulators are deterministic given the initial state and the actions), what
`SlotEpisodes` has recorded of it, and the base chunk `BaseActionQueue` holds for it. The torch
and numpy RNG states are in the checkpoint already, so everything after the replay draws what
the uninterrupted run drew. The replay steps the simulator slots directly, below the queue:
the base is not queried and no RNG of this process is touched.

Shapes: L steps of the episode so far, Q base actions left in the slot's queue, Ds, Da.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vla_rl.core.slots import step_slots
from vla_rl.core.types import EpisodeSpec

if TYPE_CHECKING:
    from vla_rl.core.types import Observation, TaskSpec
    from vla_rl.methods.residual.base_action_queue import BaseActionQueue
    from vla_rl.methods.residual.transitions import SlotEpisodes

EPISODE_FIELDS = ("states", "bases", "actions", "rewards", "env_actions")


def snapshot(
    venv: BaseActionQueue, store: SlotEpisodes, obs: Observation
) -> tuple[list[dict], list[dict]]:
    """(tensors, specs) of every slot's episode in progress, `obs` being the loop's current
    observation: per slot the recorded steps (L rows of each of EPISODE_FIELDS), the queue
    (Q, Da) and the current state (Ds,) for the checkpoint's tensor tree, and its episode
    {task, init_id, group} for state.json."""
    ds, da = obs["state"].shape[1], venv.single_action_space.shape[0]
    widths = {"states": ds, "bases": da, "actions": da, "rewards": None, "env_actions": da}
    tensors, specs = [], []
    for slot, episode in enumerate(store.episodes):
        spec = venv.episodes[slot]
        assert spec is not None, "every slot runs an episode between steps"
        specs.append({"task": spec.task.name, "init_id": spec.init_id, "group": spec.group})
        rows = {name: _stack(getattr(episode, name), widths[name]) for name in EPISODE_FIELDS}
        rows["queue"] = _stack(list(venv.queues[slot]), da)
        rows["state_now"] = np.asarray(obs["state"][slot], dtype=np.float32)
        tensors.append({k: torch.from_numpy(v) for k, v in rows.items()})
    return tensors, specs


def resume(
    venv: BaseActionQueue,
    store: SlotEpisodes,
    tensors: list[dict[str, torch.Tensor]],
    specs: list[dict],
    tasks: list[TaskSpec],
    record: bool = False,
) -> tuple[Observation, list[int]]:
    """Put every slot back where `snapshot` found it: reset it into its episode, replay its env
    actions, restore its records and its base queue. Returns (the observation of all slots,
    the slots whose replay did not reproduce the saved state: their env was lost on the way,
    or the simulator is not the one that ran them; the caller starts those on new episodes).
    The replay also gives back what the checkpoint does not hold: each step's env reward, and
    with `record` (a dense reward that scores frames) the episode's frames, rendered again."""
    by_name = {t.name: t for t in tasks}
    slots = list(range(venv.num_envs))
    episodes = [EpisodeSpec(by_name[s["task"]], s["init_id"], s["group"]) for s in specs]
    sim = venv.venv  # below the queue: replaying must not query the base
    first = sim.reset_slots(slots, episodes, [True] * len(slots) if record else None)
    frames = [list(f or [])[-1:] for f in first]
    env_rewards: list[list[float]] = [[] for _ in slots]
    actions = [t["env_actions"].numpy() for t in tensors]
    failed: set[int] = set()
    for step in range(max(len(a) for a in actions)):
        active = [s for s in slots if len(actions[s]) > step and s not in failed]
        if not active:
            break
        results = step_slots(sim, active, np.stack([actions[s][step][None] for s in active]))
        failed.update(s for s, r in zip(active, results) if r.lost)
        for s, r in zip(active, results):
            env_rewards[s].append(float(np.sum(r.rewards)))
            frames[s].extend(r.frames[-1:] if r.frames else [])
    for slot, saved in zip(slots, tensors):
        episode = store.episodes[slot]
        for name in EPISODE_FIELDS:
            rows = saved[name].numpy()
            setattr(episode, name, rows.tolist() if name == "rewards" else list(rows))
        episode.frames, episode.env_rewards = frames[slot], env_rewards[slot]
        venv.queues[slot] = deque(saved["queue"].numpy())
    obs = venv.observe(slots)  # the queues are full again: this queries nothing
    for slot, saved in zip(slots, tensors):
        now = np.asarray(obs["state"][slot], dtype=np.float32)
        if not np.array_equal(now, saved["state_now"].numpy()):
            failed.add(slot)
    return obs, sorted(failed)


def _stack(rows: list[Any], width: int | None) -> np.ndarray:
    if not rows:
        return np.zeros((0,) if width is None else (0, width), dtype=np.float32)
    return np.stack([np.asarray(r, dtype=np.float32) for r in rows])
