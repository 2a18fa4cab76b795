"""The `ray` backend (--env.backend ray): B env slots hosted by W Ray actors, on this machine or
over a Ray cluster, behind the same SlotEnv protocol as the local worker processes.

Why it is shaped this way:
* It is the local backend (vla_rl/rollout/local.py) with Ray as the transport: the same slot
  layout (a contiguous block of slots per worker, main-process slots last), the same command
  handler (`_handle`) inside each actor, one remote call per worker per request carrying the
  chunks of all its slots. The engine makes every decision in the driver, so both backends give
  the same episodes for the same seed (tests/test_ray_backend.py checks it).
* Only the env workers are actors. The policy and the learner stay in the driver, which batches
  inference over all slots: a VLA is too large to copy into every env worker
  (../shared/reference/scale-robotwin.md, A.3).
* Faults are handled here, not by Ray's task retries. A request steps envs, so it must run at
  most once (max_task_retries=0). A worker that dies, hangs past `step_timeout_s` (we ray.kill
  it) or whose env raises is restarted by Ray (`max_restarts`), which runs `EnvWorker.__init__`
  again and so builds fresh envs. Every request it had in flight then reports its slots `lost`,
  as on the local backend, and the engine runs those episodes again from their initial states
  with the same noise keys: results do not depend on faults, and the learner never sees a
  partial group. A worker lost more than `max_restarts` times ends the run with WorkerError.
  One difference from local: there an env's exception ends the run at once. Here it is a loss,
  because on a cluster it is as often the node's fault (a lost GPU renderer, memory) as the
  env's. A deterministic bug still ends the run after max_restarts + 1 tries, with its traceback.
* Ray is an optional extra and is imported here only, inside functions: `import vla_rl`, the CLI
  and the local backend never load it (tests/test_imports.py).
"""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from vla_rl.core.benchmark import EnvConfig, EpisodeSpec
from vla_rl.core.registry import MissingExtraError
from vla_rl.core.slots import SlotStep, WorkerError, slot_observations
from vla_rl.core.types import Observation
from vla_rl.rollout.chunked_env import ChunkedEnv
from vla_rl.rollout.local import (
    LOST,
    MAIN,
    _handle,
    group_by_owner,
    in_slot_order,
    reset_items,
    slot_layout,
)

INSTALL_HINT = 'the ray backend needs Ray: pip install -e ".[ray]"'
# Seconds an actor may take to start and build its envs (or longer, with a longer step timeout).
# A fresh process imports torch first: about 5 s on the 2-core reference machine under load.
START_TIMEOUT_S = 300.0
# Seconds to wait for CPUs just released by other actors (ray.kill frees them asynchronously).
FREE_WAIT_S = 10.0
# Logical CPUs per core of the Ray this backend starts on this machine: a run holds its training
# env and an evaluation's env at once (grpo's 2 rollout workers and the eval's 2, each reserving
# 1 CPU, on a 2-core machine: they waited for each other for ever with 1 per core). The cores
# are shared as the local backend's processes share them.
PRIVATE_CPUS_PER_CORE = 4


def import_ray():
    """The ray module, or MissingExtraError saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise MissingExtraError(f"{INSTALL_HINT} ({err})") from err
    return ray


class StartTimeout(WorkerError):
    """An env worker did not answer within the start timeout: hung while building its envs."""


class EnvWorker:
    """One actor's block of env slots: what a local worker process does, as actor methods.

    Ray restarts an actor by running __init__ again, so a restarted worker has fresh envs and a
    new `incarnation`. Every reply carries it: a reply from an incarnation the driver has not
    met tells it of a restart it did not witness (the actor died between two requests).
    Ray sets OMP_NUM_THREADS to the actor's CPUs (at least 1, measured on 2.60), as the local
    workers keep BLAS single-threaded.
    """

    def __init__(self, env_fn: Callable[[], gym.Env], num_slots: int):
        self.incarnation = uuid.uuid4().hex
        self.envs = [ChunkedEnv(env_fn()) for _ in range(num_slots)]

    def ping(self) -> str:
        return self.incarnation

    def run(self, command: str, payload: Any) -> tuple[str, str, Any]:
        """(incarnation, "ok", result) or (incarnation, "error", traceback): an env's exception
        comes back as a reply, so that the driver tells it from the actor's death."""
        try:
            return self.incarnation, "ok", _handle(self.envs, command, payload)
        except Exception:
            return self.incarnation, "error", traceback.format_exc()

    def close(self) -> None:
        for env in self.envs:
            env.close()


@dataclass
class Flight:
    """A request in flight: per worker its reply and the worker's loss count when it was sent;
    the results of the main-process slots (stepped while the workers step theirs); the slots it
    was sent for and, for a step, the slots it was asked for (stale ones are not sent)."""

    refs: dict[int, Any] = field(default_factory=dict)
    sent_at: dict[int, int] = field(default_factory=dict)
    main: Any = None
    slots: list[int] = field(default_factory=list)
    asked: list[int] = field(default_factory=list)


class RaySlotEnv:
    """B = `num_envs` env slots: `main_envs` stepped by the calling process, the rest over
    `num_workers` Ray actors (`EnvWorker`) of `worker_cpus` CPUs each (num_workers = 0: all in
    the calling process, and Ray is not needed).

    Fault counters, for the caller to log: `restarts` (per worker, times it was lost and
    restarted), `lost_slots` (slot steps reported lost, whose episodes the engine reruns) and
    `losses` (one line per loss: which worker, what happened).
    """

    def __init__(
        self,
        env_fn: Callable[[], gym.Env],
        num_envs: int,
        num_workers: int = 2,
        main_envs: int = 0,
        step_timeout_s: float | None = None,
        max_restarts: int = 3,
        worker_cpus: float = 1.0,
        address: str | None = None,
    ):
        """step_timeout_s: seconds a worker may take to answer one request before it counts as
        hung (None: wait forever; starting gets at least START_TIMEOUT_S). max_restarts: losses
        per worker that Ray restarts it after; one more ends the run. address: the Ray cluster
        to join when Ray is not initialised yet (EnvConfig.ray_address)."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not 0 <= main_envs <= num_envs:
            raise ValueError(f"main_envs must be in 0..num_envs ({num_envs}), got {main_envs}")
        self.num_envs = num_envs
        self._counts, self._owner = slot_layout(num_envs, num_workers, main_envs)
        self.num_workers = len(self._counts)
        self.step_timeout_s, self.max_restarts = step_timeout_s, max_restarts
        self.episodes: list[EpisodeSpec | None] = [None] * num_envs
        self._obs: list[dict[str, np.ndarray] | None] = [None] * num_envs
        # Slots whose worker was lost since their last reset: stepping them would step a fresh,
        # never-reset env, so they are not sent, and report lost when stepped.
        self._stale: set[int] = set()
        self.restarts = [0] * self.num_workers
        self.lost_slots = 0
        self.losses: list[str] = []  # what happened, one line per loss (for logs)
        self._closed = False
        self._workers: list[Any] = []
        self._incarnation: list[str] = []
        self._main = [ChunkedEnv(env_fn()) for _ in range(num_envs - sum(self._counts))]
        if self.num_workers:
            self._ray = import_ray()
            connect(self._ray, address, self.num_workers * worker_cpus)
            self._check_cpus(worker_cpus)
            actor = self._ray.remote(EnvWorker).options(
                num_cpus=worker_cpus, max_restarts=max_restarts, max_task_retries=0
            )
            self._workers = [actor.remote(env_fn, count) for count in self._counts]
            self._incarnation = [self._start(w) for w in range(self.num_workers)]
        first = MAIN if self._main else 0
        spaces = self._wait(self._send("spaces", {first: None}))[first]
        if spaces is LOST:
            raise WorkerError("env worker 0 was lost before it could say its action space")
        self.single_observation_space, self.single_action_space = spaces

    # ---- transport ---------------------------------------------------------------------------
    def _check_cpus(self, worker_cpus: float) -> None:
        """An actor that asks for more CPUs than the cluster has, or than are free, waits for
        ever, silently (a known trap: ray-project/ray #47792, verl PR #6663): say so instead.
        CPUs other actors just released take a moment to show as free: wait FREE_WAIT_S."""
        # An actor runs on one node: one bigger than every node waits for ever too, however
        # many CPUs the cluster has in all.
        nodes = [
            n.get("Resources", {}).get("CPU", 0.0) for n in self._ray.nodes() if n.get("Alive")
        ]
        if nodes and worker_cpus > max(nodes):
            raise WorkerError(
                f"one env worker asks for {worker_cpus:g} CPUs (--env.ray-worker-cpus), the "
                f"largest node of the Ray cluster has {max(nodes):g}: lower --env.ray-worker-cpus"
            )
        need = self.num_workers * worker_cpus
        have = self._ray.cluster_resources().get("CPU", 0.0)
        if need > have:
            raise WorkerError(
                f"{self.num_workers} env workers x {worker_cpus:g} CPUs need {need:g} CPUs, the "
                f"Ray cluster has {have:g}: lower --env.num-workers or --env.ray-worker-cpus"
            )
        deadline = time.monotonic() + FREE_WAIT_S
        while (free := self._ray.available_resources().get("CPU", 0.0)) < need:
            if time.monotonic() > deadline:
                raise WorkerError(
                    f"{self.num_workers} env workers x {worker_cpus:g} CPUs need {need:g} CPUs, "
                    f"{free:g} of the Ray cluster's {have:g} are free (other actors hold the "
                    "rest, e.g. this run's training env workers during an evaluation): lower "
                    "--env.num-workers or --env.ray-worker-cpus"
                )
            time.sleep(0.2)

    def _wait_ready(self, w: int, old: str | None = None) -> str:
        """Wait for worker w to be up with its envs built, and other than incarnation `old` (one
        we killed: ray.kill returns before the actor is dead); its incarnation."""
        exceptions = self._ray.exceptions
        # A call that reaches an actor while Ray restarts it fails as "unavailable" (measured on
        # 2.60): ask again until it is up.
        restarting = getattr(exceptions, "ActorUnavailableError", ())
        timeout = None if self.step_timeout_s is None else max(self.step_timeout_s, START_TIMEOUT_S)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                incarnation = self._ray.get(self._workers[w].ping.remote(), timeout=left)
                if incarnation != old:
                    return incarnation
                time.sleep(0.05)
            except exceptions.GetTimeoutError:
                raise StartTimeout(f"env worker {w} did not start within {timeout:g} s") from None
            except restarting:
                time.sleep(0.05)
            except exceptions.RayError as err:  # its envs failed to build, or no restart left
                raise WorkerError(f"env worker {w} could not start: {err}") from None

    def _start(self, w: int, old: str | None = None) -> str:
        """Wait for worker w to be up (`_wait_ready`). One that does not start in time is hung
        (a simulator or renderer stuck while building its envs): kill it and let Ray start it
        again, as for any loss, up to max_restarts times; its incarnation."""
        while True:
            try:
                return self._wait_ready(w, old)
            except StartTimeout as err:
                if self.restarts[w] >= self.max_restarts:
                    raise WorkerError(
                        f"{err}, {self.restarts[w] + 1} times; giving up (`ray status` shows "
                        "whether the cluster has the CPUs it asks for)"
                    ) from None
                self.restarts[w] += 1
                self.losses.append(f"{err}; restarted")
                self._ray.kill(self._workers[w], no_restart=False)
                old = None  # the hung one never said its incarnation; any answer is the new one

    def _lose(self, w: int, why: str, kill: bool = False, detail: str = "") -> None:
        """Worker w was lost: void its slots, have Ray restart it (killing it first if it hung
        or its env raised) and wait until it is up; WorkerError once it failed too often."""
        self._stale.update(s for s, (owner, _) in enumerate(self._owner) if owner == w)
        if self.restarts[w] >= self.max_restarts:
            message = f"env worker {w} {why}, {self.restarts[w] + 1} times; giving up"
            raise WorkerError(f"{message}. The last error:\n{detail}" if detail else message)
        self.restarts[w] += 1
        if kill:  # no_restart=False: Ray starts it again, which builds fresh envs
            self._ray.kill(self._workers[w], no_restart=False)
        self._incarnation[w] = self._start(w, self._incarnation[w] if kill else None)
        last_line = f": {detail.strip().splitlines()[-1]}" if detail else ""
        self.losses.append(f"env worker {w} {why}{last_line}")

    def _send(self, command: str, per_owner: dict[int, Any]) -> Flight:
        flight = Flight()
        for w, payload in per_owner.items():
            if w != MAIN:  # a dead actor fails the reply, not the submission
                flight.refs[w] = self._workers[w].run.remote(command, payload)
                flight.sent_at[w] = self.restarts[w]
        if MAIN in per_owner:  # step our own slots while the workers step theirs
            flight.main = _handle(self._main, command, per_owner[MAIN])
        return flight

    def _wait(self, flight: Flight) -> dict[int, Any]:
        """Every worker's reply to the flight; LOST for a worker lost meanwhile (it has been
        restarted; the caller decides what its slots' episodes become)."""
        exceptions = self._ray.exceptions if self._workers else None
        replies: dict[int, Any] = {} if flight.main is None else {MAIN: flight.main}
        for w, ref in flight.refs.items():
            replies[w] = LOST
            if flight.sent_at[w] != self.restarts[w]:  # lost since: its reply is void
                continue
            try:
                incarnation, status, result = self._ray.get(ref, timeout=self.step_timeout_s)
            except exceptions.GetTimeoutError:
                self._lose(w, f"did not answer within {self.step_timeout_s:g} s", kill=True)
                continue
            except exceptions.RayError as err:  # the actor died (or was unreachable)
                self._lose(w, f"died ({type(err).__name__})")
                continue
            if incarnation != self._incarnation[w]:  # it died and restarted between requests
                self._lose(w, "was restarted by Ray after a failure between requests")
            elif status == "error":
                self._lose(w, "raised an exception", kill=True, detail=result)
            else:
                replies[w] = result
        return replies

    def _scatter(self, command: str, slots: Sequence[int], items: Sequence[Any]) -> Flight:
        """Send per-slot items to their owners, one request per worker."""
        per_owner = group_by_owner(self._owner, slots, items)
        flight = self._send(command, per_owner)
        flight.slots = list(slots)
        return flight

    def _gather(self, flight: Flight) -> list[Any]:
        return in_slot_order(self._owner, flight.slots, self._wait(flight))

    # ---- the SlotEnv protocol ----------------------------------------------------------------
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
        results = self._gather(self._scatter("reset", slots, items))
        for slot, ep, res in zip(slots, episodes, results):
            if res is not LOST:
                self.episodes[slot], self._obs[slot] = ep, res[0]
                self._stale.discard(slot)
        lost = [i for i, res in enumerate(results) if res is LOST]
        if lost:  # the worker was restarted: a reset starts from scratch anyway, so do it again
            again = self.reset_slots([slots[i] for i in lost], [episodes[i] for i in lost],
                                     [record[i] for i in lost])  # fmt: skip
            for i, first_frames in zip(lost, again):
                results[i] = (self._obs[slots[i]], first_frames)
        return [first_frames for _, first_frames in results]

    def step_async(self, slots: Sequence[int], chunks: np.ndarray) -> Flight:
        """Start executing one chunk (Ta, Da) per slot; collect with `step_wait(flight)`."""
        live = [i for i, slot in enumerate(slots) if slot not in self._stale]
        flight = self._scatter("step", [slots[i] for i in live], [(chunks[i],) for i in live])
        flight.asked = list(slots)
        return flight

    def step_wait(self, flight: Flight) -> list[SlotStep]:
        got = dict(zip(flight.slots, self._gather(flight)))
        out = []
        for slot in flight.asked:
            res = got.get(slot, LOST)  # a stale slot was not sent: its env is gone
            if res is LOST:
                res = SlotStep.lost_slot()
                self.episodes[slot], self._obs[slot] = None, None
                self.lost_slots += 1
            else:
                self._obs[slot] = res.obs
            out.append(res)
        return out

    def observe(self, slots: Sequence[int]) -> Observation:
        """The current observation batch of `slots`, with instruction and task name. A stale
        slot shows its last observation: its next step reports it lost."""
        return slot_observations(slots, self.episodes, self._obs)

    def call(self, name: str, *args: Any) -> list[Any]:
        """Call a method of every slot's underlying env; results in slot order."""
        owners = sorted({w for w, _ in self._owner})
        replies = self._wait(self._send("call", {w: (name, args) for w in owners}))
        if any(reply is LOST for reply in replies.values()):
            raise WorkerError(f"an env worker was lost during call({name!r}); call it again")
        return [replies[w][local] for w, local in self._owner]

    def close(self) -> None:
        """Close every env (10 s for the workers to do it), then end the actors; idempotent."""
        if self._closed:
            return
        self._closed = True
        for env in self._main:
            env.close()
        if not self._workers:
            return
        try:
            self._ray.wait([w.close.remote() for w in self._workers],
                           num_returns=len(self._workers), timeout=10)  # fmt: skip
            for worker in self._workers:
                self._ray.kill(worker, no_restart=True)
        except Exception:  # Ray already shut down (interpreter exit): the actors went with it
            pass

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def connect(ray: Any, address: str | None, cpus_needed: float, log_to_driver: bool = False) -> None:
    """Initialise Ray unless it is: join the cluster at `address` ("auto", HOST:PORT), or start
    one on this machine. That one gets PRIVATE_CPUS_PER_CORE logical CPUs per core, and at
    least the workers' total, so that what runs on the local backend (oversubscribing the
    cores: a training env and an evaluation's at once) runs here too. Workers' output stays in
    Ray's logs (/tmp/ray/session_latest/logs/): the driver's progress bars and one-line errors
    stay readable (`log_to_driver`: Ray Train's ranks, whose output is the run's own).

    Ray runs its worker processes at niceness 15 (its `worker_niceness`, so that its own
    daemons come first). An env worker is the simulator itself: at 15 it yields every core to
    the driver's inference, and on the 2-core reference machine 2 Ray env workers ran Meta-World
    at 0.64x the local workers (measured, docs/RESULTS.md "Scale-out"). The Ray started here
    runs them at 0, as the local backend's; a cluster's nodes need `RAY_worker_niceness=0` in
    the environment of `ray start` for the same."""
    if ray.is_initialized():
        return
    # Ray's own warnings in its actors (Ray Train's controller polls a state API that needs the
    # dashboard, which the [ray] extra leaves out, and says so every few seconds) stay in its
    # logs; errors still reach the driver.
    quiet = {"logging_config": ray.LoggingConfig(log_level="ERROR")} if log_to_driver else {}
    if address:
        ray.init(
            address=address, log_to_driver=log_to_driver, logging_level=logging.WARNING, **quiet
        )
    else:
        # address "local": a Ray of its own even where RAY_ADDRESS is set or a cluster's
        # address file is on this machine (address None would join that cluster instead)
        ray.init(address="local", num_cpus=max(PRIVATE_CPUS_PER_CORE * (os.cpu_count() or 1),
                              math.ceil(cpus_needed)),
                 include_dashboard=False, log_to_driver=log_to_driver,
                 logging_level=logging.WARNING,
                 _system_config={"worker_niceness": 0}, **quiet)  # fmt: skip


def make_ray_env(env_fn: Callable[[], gym.Env], cfg: EnvConfig) -> RaySlotEnv:
    """The `ray` backend: B = cfg.num_envs slots in cfg.num_workers Ray actors (plus
    cfg.main_envs in the calling process), on the cluster at cfg.ray_address or a Ray started
    on this machine."""
    return RaySlotEnv(env_fn, cfg.num_envs, cfg.num_workers, cfg.main_envs,
                      step_timeout_s=cfg.step_timeout_s, max_restarts=cfg.ray_max_restarts,
                      worker_cpus=cfg.ray_worker_cpus, address=cfg.ray_address)  # fmt: skip
