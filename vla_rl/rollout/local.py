"""ChunkedVectorEnv: B env slots spread over W worker processes, stepped one chunk at a time.

Why not gymnasium's AsyncVectorEnv as is: every slot here must be able to reset into a
*different* (task, initial state) given by the caller, and only some slots step at a time (an
episode that ended waits for a refill). Both need per-slot options that AsyncVectorEnv cannot
pass. This class still is a `gymnasium.vector.VectorEnv` with the standard `reset`/`step` (all
slots at once), and adds the slot-level calls the rollout engine uses.

Worker slots are assigned in contiguous blocks; main-process slots (if any) come last. One
message per worker per chunk; a worker executes the chunks of all its slots, so several envs
amortise each message. With W = 0 every slot lives in the calling process (debugging, tests).
"""

from __future__ import annotations

import ctypes
import dataclasses
import multiprocessing as mp
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from vla_rl.core.benchmark import EnvConfig, EpisodeSpec
from vla_rl.core.slots import SlotStep, WorkerError, slot_observations
from vla_rl.core.types import Observation
from vla_rl.rollout.chunked_env import ChunkedEnv


def reset_items(episodes: Sequence[EpisodeSpec], record: Sequence[bool | str | int]) -> list[tuple]:
    """What a worker's "reset" command takes per slot: (task, init id, record mode). The worker
    needs the task's name, horizon and instruction, not its list of init ids."""
    return [(dataclasses.replace(ep.task, init_ids=()), ep.init_id, rec)
            for ep, rec in zip(episodes, record)]  # fmt: skip


def _handle(envs: list[ChunkedEnv], command: str, payload: Any) -> Any:
    """Run one command on this process's slots (same code in workers and in-process)."""
    if command == "reset":
        out = []
        for local, task, init_id, record in payload:
            env = envs[local]
            env.record_frames = record
            obs, info = env.reset(options={"task": task, "init_id": init_id})
            out.append((obs, info.get("frames")))
        return out
    if command == "step":
        out = []
        for local, chunk in payload:
            obs, _, term, trunc, info = envs[local].step(chunk)
            out.append(
                SlotStep(
                    obs,
                    info["rewards"],
                    info["steps"],
                    term,
                    trunc,
                    info["success"],
                    info.get("frames"),
                )
            )
        return out
    if command == "spaces":
        return envs[0].observation_space, envs[0].action_space
    if command == "call":
        name, args = payload
        return [getattr(env.unwrapped, name)(*args) for env in envs]
    raise ValueError(f"unknown worker command {command!r}")


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this worker when the process that started it dies, however it dies
    (kill -9 included: then no `close` message ever comes, and a worker blocked in a long
    step would otherwise outlive its run). Elsewhere the closed pipe ends the worker (EOFError)
    at its next message."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect (reparented)
        os._exit(0)


def _worker(conn, env_fn: Callable[[], gym.Env], num_slots: int, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    # One simulator per core: keep BLAS/OpenMP inside the worker single-threaded.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    envs: list[ChunkedEnv] = []
    try:
        envs = [ChunkedEnv(env_fn()) for _ in range(num_slots)]
        conn.send((-1, "ok", None))
        while True:
            tag, command, payload = conn.recv()
            if command == "close":
                break
            try:
                conn.send((tag, "ok", _handle(envs, command, payload)))
            except Exception:  # report to the parent instead of dying silently
                conn.send((tag, "error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):
        pass
    except Exception:
        conn.send((-1, "error", traceback.format_exc()))
    finally:
        for env in envs:
            env.close()
        conn.close()


@dataclass
class Ticket:
    """A request in flight: its tag, the workers it went to, and the slots it covers."""

    tag: int
    workers: list[int]
    slots: list[int] = field(default_factory=list)  # the slots it was sent for
    asked: list[int] = field(default_factory=list)  # for a step: those asked (stale ones unsent)


class WorkerLost(WorkerError):
    """A worker died or stopped answering; it has been replaced by a fresh one."""


LOST = object()  # the reply of a worker lost while the request was in flight


MAIN = -1  # owner id of the slots stepped by the main process itself


# ---- slot layout, shared with the Ray backend (vla_rl/rollout/ray_backend.py) -------------------
def slot_layout(
    num_envs: int, num_workers: int, main_envs: int
) -> tuple[list[int], list[tuple[int, int]]]:
    """Slots per worker, and each slot's (owner, index among its owner's slots): worker slots in
    contiguous blocks first, then the main-process slots (owner MAIN). Fewer workers than asked
    when there are fewer worker slots than workers; none at all puts every slot in the main
    process."""
    num_workers = min(num_workers, num_envs - main_envs)
    if num_workers == 0:
        main_envs = num_envs
    remote = num_envs - main_envs
    counts = np.bincount(
        np.arange(remote) * max(num_workers, 1) // max(remote, 1), minlength=num_workers
    )[:num_workers]
    owner = [(w, i) for w, c in enumerate(counts) for i in range(int(c))]
    owner += [(MAIN, i) for i in range(main_envs)]
    return [int(c) for c in counts], owner


def group_by_owner(
    owner: Sequence[tuple[int, int]], slots: Sequence[int], items: Sequence[Any]
) -> dict[int, list[tuple]]:
    """Per-slot items as one payload per owner: owner -> [(index in owner, *item), ...]."""
    per_owner: dict[int, list[tuple]] = {}
    for slot, item in zip(slots, items):
        w, local = owner[slot]
        per_owner.setdefault(w, []).append((local, *item))
    return per_owner


def in_slot_order(
    owner: Sequence[tuple[int, int]], slots: Sequence[int], replies: dict[int, Any]
) -> list[Any]:
    """The owners' replies to a `group_by_owner` request, back in the order of `slots`; LOST
    for every slot of an owner whose reply is LOST."""
    cursor = dict.fromkeys(replies, 0)
    out = []
    for slot in slots:
        w = owner[slot][0]
        if replies[w] is LOST:
            out.append(LOST)
            continue
        out.append(replies[w][cursor[w]])
        cursor[w] += 1
    return out


class ChunkedVectorEnv(gym.vector.VectorEnv):
    """B = `num_envs` chunk-executing env slots: `main_envs` of them stepped by the calling
    process, the rest split over `num_workers` worker processes (num_workers = 0: all in the
    calling process, for debugging and tests).

    Main-process slots run *after* the workers' messages are sent, so they step in parallel with
    the workers. On a machine with few cores this keeps every core busy without a process that
    only waits (on the 2-core reference VM a process woken by a pipe message starts slowly).
    """

    def __init__(
        self,
        env_fn: Callable[[], gym.Env],
        num_envs: int,
        num_workers: int = 2,
        main_envs: int = 0,
        step_timeout_s: float | None = None,
        max_restarts: int = 3,
    ):
        """step_timeout_s: seconds a worker may take to answer one request before it counts as
        hung (None: wait forever). A worker that dies or hangs is killed and replaced, up to
        max_restarts times per worker; the slots it held report `lost` (SlotStep.lost) and must
        be reset again."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not 0 <= main_envs <= num_envs:
            raise ValueError(f"main_envs must be in 0..num_envs ({num_envs}), got {main_envs}")
        self.num_envs = num_envs
        self._counts, self._owner = slot_layout(num_envs, num_workers, main_envs)
        self.num_workers = len(self._counts)
        main_envs = num_envs - sum(self._counts)
        self.episodes: list[EpisodeSpec | None] = [None] * num_envs
        self._obs: list[dict[str, np.ndarray] | None] = [None] * num_envs
        # Slots whose worker was lost since their last reset: stepping them would step a fresh,
        # never-reset env, so they are not sent, and report lost when stepped (the Ray backend
        # does the same). Their last observation stays: the engine may observe a slot of the
        # lost worker that was in neither the failed request nor the one that found it lost.
        self._stale: set[int] = set()
        self._closed = False
        self._next_tag = 0
        self._main_results: dict[int, Any] = {}
        self._conns, self._procs = [], []
        self._env_fn, self.step_timeout_s, self.max_restarts = env_fn, step_timeout_s, max_restarts
        self._conns = [None] * self.num_workers
        self._procs = [None] * self.num_workers
        self._stash: list[dict] = [{} for _ in self._conns]
        self._in_flight: list[set[int]] = [set() for _ in self._conns]  # tags sent, not answered
        self._void: list[set[int]] = [set() for _ in self._conns]  # tags a lost worker had
        self.restarts = [0] * len(self._conns)  # workers started again after a loss
        for w in range(self.num_workers):
            self._start_worker(w)
        self._main = [ChunkedEnv(env_fn()) for _ in range(main_envs)]
        first = MAIN if self._main else 0
        spaces = self._request({first: ("spaces", None)})[first]
        self.single_observation_space, self.single_action_space = spaces
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)

    # ---- transport ---------------------------------------------------------------------------
    # Every request carries a tag and every worker answers its requests in order, so several
    # requests can be in flight at once (the engine's pipelining); a reply that arrives while
    # waiting for another tag is kept until asked for.
    def _start_worker(self, w: int) -> None:
        """Start worker w (its block of slots) and wait for its envs to be built."""
        ctx = mp.get_context("spawn")  # safe with torch and GL contexts in the parent
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, self._env_fn, self._counts[w],
                                                 os.getpid()), daemon=True)  # fmt: skip
        proc.start()
        child.close()
        self._conns[w], self._procs[w] = parent, proc
        self._receive(w, -1)

    def _lose(self, w: int, why: str) -> None:
        """Worker w died or hung: kill it, start a fresh one, void what it had in flight, forget
        its slots' episodes; raise WorkerLost (or WorkerError once it has failed too often)."""
        proc = self._procs[w]
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5)
        self._conns[w].close()
        self._stale.update(s for s, (owner, _) in enumerate(self._owner) if owner == w)
        if self.restarts[w] >= self.max_restarts:
            raise WorkerError(f"env worker {w} {why}, {self.restarts[w] + 1} times; giving up")
        self.restarts[w] += 1
        # Every request the lost worker had, answered or not: an answer received but not yet
        # collected describes slots whose episodes are now gone, so it is void too.
        self._void[w] |= self._in_flight[w] | set(self._stash[w])
        self._in_flight[w] = set()
        self._stash[w] = {}
        self._start_worker(w)
        raise WorkerLost(f"env worker {w} {why}; restarted")

    def _receive(self, w: int, tag: int) -> Any:
        stash = self._stash[w]
        while tag not in stash:
            if tag in self._void[w]:  # sent to a worker that was lost since
                self._void[w].discard(tag)
                return LOST
            conn = self._conns[w]
            if tag != -1 and self.step_timeout_s is not None and not conn.poll(self.step_timeout_s):
                self._lose(w, f"did not answer within {self.step_timeout_s:g} s")
            try:
                got, status, result = conn.recv()
            except (EOFError, ConnectionResetError, OSError):
                self._procs[w].join(timeout=1)
                if tag == -1:  # it died building its envs: a restart would too
                    raise WorkerError(f"env worker {w} died while building its envs") from None
                self._lose(w, f"died (exit code {self._procs[w].exitcode})")
            stash[got] = (status, result)
            self._in_flight[w].discard(got)
        status, result = stash.pop(tag)
        if status == "error":
            raise WorkerError(f"env worker {w} failed:\n{result}")
        return result

    def _send(self, per_owner: dict[int, tuple[str, Any]]) -> Ticket:
        self._next_tag += 1
        tag = self._next_tag
        for w, (command, payload) in per_owner.items():
            if w != MAIN:
                try:
                    self._conns[w].send((tag, command, payload))
                    self._in_flight[w].add(tag)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    self._procs[w].join(timeout=1)
                    try:  # found dead on sending: replace it now, report the loss at the wait
                        self._lose(w, f"died (exit code {self._procs[w].exitcode})")
                    except WorkerLost:
                        self._void[w].add(tag)
        if MAIN in per_owner:  # step our own slots while the workers step theirs
            self._main_results[tag] = _handle(self._main, *per_owner[MAIN])
        return Ticket(tag, list(per_owner))

    def _wait(self, ticket: Ticket) -> dict[int, Any]:
        """Every worker's reply to the ticket; LOST for a worker that died or hung meanwhile
        (it has been restarted; the caller decides what its slots' episodes become)."""
        replies = {}
        for w in ticket.workers:
            if w == MAIN:
                replies[w] = self._main_results.pop(ticket.tag)
                continue
            try:
                replies[w] = self._receive(w, ticket.tag)
            except WorkerLost:
                replies[w] = LOST
        return replies

    def _request(self, per_owner: dict[int, tuple[str, Any]]) -> dict[int, Any]:
        return self._wait(self._send(per_owner))

    def _scatter_send(self, command: str, slots: Sequence[int], items: Sequence[Any]) -> Ticket:
        """Send per-slot items to their owners, one message per worker."""
        per_owner = group_by_owner(self._owner, slots, items)
        ticket = self._send({w: (command, p) for w, p in per_owner.items()})
        ticket.slots = list(slots)
        return ticket

    def _gather(self, ticket: Ticket) -> list[Any]:
        """Results of a scattered request, in the order of its slots."""
        return in_slot_order(self._owner, ticket.slots, self._wait(ticket))

    # ---- slot-level API used by the rollout engine --------------------------------------------
    def reset_slots(
        self,
        slots: Sequence[int],
        episodes: Sequence[EpisodeSpec],
        record: Sequence[bool | str | int] | None = None,
    ) -> list[list[np.ndarray] | None]:
        """Reset `slots` into `episodes`; returns the first video frame lists (or None).
        record: per slot, False, True (a frame per env step), "chunk" (one per chunk) or an
        int F (F of those, at the episode's end: ChunkedEnv.record_frames)."""
        record = record or [False] * len(slots)
        items = reset_items(episodes, record)
        results = self._gather(self._scatter_send("reset", slots, items))
        lost = [i for i, res in enumerate(results) if res is LOST]
        if lost:  # the worker was replaced: a reset starts from scratch anyway, so do it again
            again = self.reset_slots([slots[i] for i in lost], [episodes[i] for i in lost],
                                     [record[i] for i in lost])  # fmt: skip
            for i, first_frames in zip(lost, again):
                results[i] = (self._obs[slots[i]], first_frames)
        frames = []
        for slot, ep, (obs, first_frames) in zip(slots, episodes, results):
            self.episodes[slot] = ep
            self._obs[slot] = obs
            self._stale.discard(slot)
            frames.append(first_frames)
        return frames

    def step_slots(self, slots: Sequence[int], chunks: np.ndarray) -> list[SlotStep]:
        """Execute one chunk (Ta, Da) per slot in `slots`; chunks is (len(slots), Ta, Da)."""
        return self.step_wait(self.step_async(slots, chunks))

    def step_async(self, slots: Sequence[int], chunks: np.ndarray) -> Ticket:
        """Start executing one chunk per slot; collect with `step_wait(ticket)`."""
        live = [i for i, slot in enumerate(slots) if slot not in self._stale]
        ticket = self._scatter_send("step", [slots[i] for i in live], [(chunks[i],) for i in live])
        ticket.asked = list(slots)
        return ticket

    def step_wait(self, ticket: Ticket) -> list[SlotStep]:
        got = dict(zip(ticket.slots, self._gather(ticket)))
        results = []
        for slot in ticket.asked:
            res = got.get(slot, LOST)  # a stale slot was not sent: its env is gone
            if res is LOST:
                res = SlotStep.lost_slot()
                self.episodes[slot], self._obs[slot] = None, None
            else:
                self._obs[slot] = res.obs
            results.append(res)
        return results

    def observe(self, slots: Sequence[int]) -> Observation:
        """The current observation batch of `slots`, with instruction and task name."""
        return slot_observations(slots, self.episodes, self._obs)

    def call(self, name: str, *args: Any) -> list[Any]:
        """Call a method of every slot's underlying env; results in slot order."""
        owners = sorted({w for w, _ in self._owner})
        replies = self._request({w: ("call", (name, args)) for w in owners})
        if any(reply is LOST for reply in replies.values()):
            raise WorkerError(f"an env worker was lost during call({name!r}); call it again")
        return [replies[w][local] for w, local in self._owner]

    # ---- standard gymnasium VectorEnv API (all slots at once) ---------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """options["episodes"]: one EpisodeSpec per slot (None keeps that slot as it is)."""
        if not options or "episodes" not in options:
            raise ValueError('reset needs options={"episodes": [EpisodeSpec or None] * num_envs}')
        episodes = options["episodes"]
        slots = [i for i, ep in enumerate(episodes) if ep is not None]
        self.reset_slots(slots, [episodes[i] for i in slots])
        return self.observe(range(self.num_envs)), {}

    def step(self, actions: np.ndarray):
        """actions: (B, Ta, Da). Returns obs, summed rewards (B,), terminated, truncated, infos."""
        results = self.step_slots(range(self.num_envs), np.asarray(actions))
        infos = {
            "success": np.array([r.success for r in results]),
            "steps": np.array([r.steps for r in results]),
        }
        return (
            self.observe(range(self.num_envs)),
            np.array([r.rewards.sum() for r in results], dtype=np.float32),
            np.array([r.terminated for r in results]),
            np.array([r.truncated for r in results]),
            infos,
        )

    def close(self, **kwargs: Any) -> None:
        if self._closed:
            return
        self._closed = True
        for env in self._main:
            env.close()
        for conn in self._conns:
            try:
                conn.send((0, "close", None))
            except (BrokenPipeError, OSError, AttributeError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():  # hung or stopped (SIGTERM waits on a stopped process; SIGKILL
                proc.kill()  # does not, and Python's exit would otherwise wait on it forever)
                proc.join(timeout=5)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def make_local_env(env_fn: Callable[[], gym.Env], cfg: EnvConfig) -> ChunkedVectorEnv:
    """The `local` backend: B = cfg.num_envs slots in cfg.num_workers worker processes on this
    machine (plus cfg.main_envs in the calling process)."""
    return ChunkedVectorEnv(env_fn, cfg.num_envs, cfg.num_workers, cfg.main_envs,
                            step_timeout_s=cfg.step_timeout_s)  # fmt: skip
