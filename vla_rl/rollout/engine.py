"""The rollout engine: runs a list of episodes on any SlotEnv with batched inference.

Each iteration: observe every active slot, call the policy ONCE on that batch (B x obs -> B x
chunk), send each slot its chunk (one message per worker), and collect the results. A slot whose
episode ended is refilled with the next pending episode before the next iteration, so the
workers stay busy until the queue drains. Stepping is synchronous and slots are filled in a
fixed order, so the same episodes, policy and seed give the same results whatever the timing.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vla_rl.core.benchmark import EpisodeSpec
from vla_rl.core.noise import NOISE_KEY, episode_key, step_key
from vla_rl.core.policy import BasePolicy
from vla_rl.core.slots import SlotEnv, WorkerError
from vla_rl.core.trajectories import EpisodeRecord
from vla_rl.core.types import index_obs
from vla_rl.rollout.frames import kept_frames

MAX_RERUNS = 3  # an episode whose env is lost more often than this ends the run


@dataclass
class RolloutStats:
    episodes: int = 0
    env_steps: int = 0
    decision_steps: int = 0
    wall_s: float = 0.0
    policy_s: float = 0.0  # time inside policy.sample_actions
    env_s: float = 0.0  # time waiting for env workers (reset + step)
    episodes_rerun: int = 0  # episodes started again because their env's worker was lost

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / max(self.wall_s, 1e-9)


class RolloutEngine:
    """Runs episodes of any benchmark with any BasePolicy on a SlotEnv (vla_rl/core/slots.py):
    the process-pool vector env, a batched in-process env, or a wrapper of either.

    pipeline_groups (G): the B slots are split into G groups that take turns: while the workers
    step group g's chunks, the main process runs the policy for group g+1, and every worker
    always has its next message queued, so neither the policy call nor the message round trip
    (about 0.5 ms on the reference VM, where a process woken from a pipe starts slowly) leaves the
    workers idle. G = 1 is the plain synchronous loop with the largest inference batch.
    """

    def __init__(self, venv: SlotEnv, pipeline_groups: int = 2):
        if pipeline_groups < 1:
            raise ValueError(f"pipeline_groups must be >= 1, got {pipeline_groups}")
        self.venv = venv
        self.groups = min(pipeline_groups, venv.num_envs)
        self.last_stats = RolloutStats()

    def _group_slots(self) -> list[list[int]]:
        """Interleave slots so that every group spans every worker (slot i -> group i % G)."""
        return [list(range(g, self.venv.num_envs, self.groups)) for g in range(self.groups)]

    def run(
        self,
        policy: BasePolicy,
        episodes: Sequence[EpisodeSpec],
        *,
        deterministic: bool = False,
        keep_steps: bool = False,
        record_video: Callable[[int, EpisodeSpec], bool] | None = None,
        seed: int | None = 0,
        on_episode_end: Callable[[EpisodeRecord], None] | None = None,
        frames_per: str | int = "step",
    ) -> list[EpisodeRecord]:
        """Run every episode once; records come back in the order of `episodes`.

        keep_steps: keep observations, samples and per-chunk rewards (for training).
        record_video: (episode index, spec) -> whether to record that episode's frames.
        frames_per: "step" records a frame per env step (videos), "chunk" one per decision step
            plus the first (what a trajectory encoder samples from, at a fraction of the cost),
            an int F only the F of those a uniform sampler reads (`kept_frames`: SRPO's 16;
            an env with render snapshots, Meta-World, renders only those).
        seed: keys every episode's random streams (vla_rl.core.noise) by (seed, task, init id,
            occurrence), and every policy call's rows by decision step (obs["noise_key"]), so an
            episode's draws do not depend on the batch it shared or the slot it ran in; also
            seeds torch's global RNG for draws that are not keyed. None: no keys, the global
            RNG left alone.
        Every decision (slot refills, policy calls) happens in the main process in a fixed order,
        so results depend on the seed and the configuration, never on timing.
        """
        venv = self.venv
        records: list[EpisodeRecord | None] = [None] * len(episodes)
        keyed = list(episodes) if seed is None else _keyed(episodes, seed)
        pending = deque(enumerate(episodes))
        active: dict[int, tuple[int, EpisodeRecord]] = {}  # slot -> (episode index, record)
        rerun: dict[int, int] = {}  # episode index -> times its env was lost
        stats = RolloutStats()

        def refill(group: list[int]) -> None:
            """Reset the free slots of a group into the next pending episodes."""
            fill = []
            for slot in group:
                if slot in active or not pending:
                    continue
                idx, spec = pending.popleft()
                record = EpisodeRecord(spec)
                wants_video = bool(record_video and record_video(idx, spec))
                if wants_video:
                    record.frames = []
                active[slot] = (idx, record)
                fill.append((slot, keyed[idx], record_mode if wants_video else False))
            if not fill:
                return
            t0 = time.perf_counter()
            first_frames = venv.reset_slots(*(list(x) for x in zip(*fill)))
            stats.env_s += time.perf_counter() - t0
            for (slot, _, _), frames in zip(fill, first_frames):
                if frames is not None:
                    active[slot][1].frames.extend(frames)

        def launch(group: list[int]):
            """Refill, observe, run the policy once on the group's batch, send the chunks."""
            refill(group)
            slots = [s for s in group if s in active]
            if not slots:
                return None
            obs = venv.observe(slots)
            if seed is not None:  # each row's key: its episode's and its decision step
                obs[NOISE_KEY] = np.array(  # type: ignore[typeddict-unknown-key]
                    [step_key(keyed[active[s][0]].noise_key, len(active[s][1].rewards))
                     for s in slots], dtype=np.int64,
                )  # fmt: skip
            t0 = time.perf_counter()
            with torch.no_grad():
                sample = policy.sample_actions(obs, deterministic=deterministic)
            stats.policy_s += time.perf_counter() - t0
            chunks = sample.actions.detach().cpu().numpy()  # (B_group, Ta, Da)
            return venv.step_async(slots, chunks), slots, obs, sample

        def collect(flight) -> None:
            ticket, slots, obs, sample = flight
            t0 = time.perf_counter()
            results = venv.step_wait(ticket)
            stats.env_s += time.perf_counter() - t0
            stats.decision_steps += len(slots)
            for row, (slot, res) in enumerate(zip(slots, results)):
                idx, record = active[slot]
                if res.lost:  # its worker died or hung and was replaced: run it again
                    del active[slot]
                    rerun[idx] = rerun.get(idx, 0) + 1
                    if rerun[idx] > MAX_RERUNS:
                        spec = record.spec
                        raise WorkerError(
                            f"the env of episode {spec.task.name!r} init {spec.init_id} was lost "
                            f"{rerun[idx]} times (its worker died or hung); giving up"
                        )
                    pending.appendleft((idx, record.spec))  # same key: the same draws again
                    stats.episodes_rerun += 1
                    continue
                chunk_reward = float(res.rewards.sum())
                record.env_steps += res.steps
                record.episode_return += chunk_reward
                record.chunk_steps.append(res.steps)
                record.rewards.append(chunk_reward)
                if keep_steps:
                    record.observations.append(index_obs(obs, [row]))
                    record.samples.append(sample.index([row]))
                if record.frames is not None and res.frames:
                    record.frames.extend(res.frames)
                stats.env_steps += res.steps
                if res.terminated or res.truncated:
                    if sampled and record.frames is not None:  # the identity if the env kept them
                        keep = kept_frames(len(record.frames), frames_per)
                        record.frames = [record.frames[i] for i in keep]
                    record.success = res.success
                    record.terminated = res.terminated
                    record.truncated = res.truncated
                    if keep_steps:
                        record.final_observation = venv.observe([slot])
                    records[idx] = record
                    del active[slot]
                    stats.episodes += 1
                    if on_episode_end is not None:
                        on_episode_end(record)

        start = time.perf_counter()
        rng_state = torch.random.get_rng_state()
        if seed is not None:
            torch.manual_seed(seed)
        sampled = type(frames_per) is int
        if not (frames_per in ("step", "chunk") or (sampled and frames_per > 0)):
            raise ValueError(
                f"frames_per must be 'step', 'chunk' or an int > 0, got {frames_per!r}"
            )
        record_mode = True if frames_per == "step" else frames_per
        was_training = policy.training
        policy.eval()
        # One intra-op thread for inference: the env workers need the other cores, and small
        # inference batches gain nothing from more. With 2 threads beside 2 busy workers on the
        # 2-core reference machine, OpenMP threads spin against the simulators and a token-VLA
        # evaluation ran over 40x slower (11.6 s vs more than 8 min, measured).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            groups = self._group_slots()
            in_flight = [launch(group) for group in groups]
            while any(f is not None for f in in_flight):
                for g, group in enumerate(groups):
                    if in_flight[g] is not None:
                        collect(in_flight[g])
                    in_flight[g] = launch(group)  # None once the group has nothing left to run
        finally:
            torch.set_num_threads(threads)
            if seed is not None:
                torch.random.set_rng_state(rng_state)
            policy.train(was_training)
        stats.wall_s = time.perf_counter() - start
        self.last_stats = stats
        return records  # type: ignore[return-value]


def _keyed(episodes: Sequence[EpisodeSpec], seed: int) -> list[EpisodeSpec]:
    """The episodes with their noise keys: (seed, task, init id, occurrence), where occurrence
    counts earlier episodes of the list with the same task and init id (a GRPO group's members
    share their initial state, not their noise)."""
    seen: dict[tuple[str, int], int] = {}
    out = []
    for spec in episodes:
        at = (spec.task.name, spec.init_id)
        seen[at] = seen.get(at, -1) + 1
        key = episode_key(seed, spec.task.name, spec.init_id, seen[at])
        out.append(dataclasses.replace(spec, noise_key=key))
    return out
