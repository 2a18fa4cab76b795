"""The `ray` backend (vla_rl/rollout/ray_backend.py): the local backend's episodes, bit for bit,
with 1 and 2 actors; a worker that dies, hangs or whose env raises is restarted and its episodes
run again to the same records; one that keeps dying ends the run with one line.

Every test but the first needs the [ray] extra (marker `ray`; CI runs `pytest -m ray` after
installing it). They share one 2-CPU Ray and two envs (1 and 2 workers of half a CPU each):
each actor start imports torch in a fresh process, the slow part on a 2-core machine. A fault
is cued by a file the envs look for at every step, so the same envs run the calm and the faulty
batches.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from toy_benchmark import FaultyToyBenchmark, ToyBenchmark, ToyEnv
from toy_policies import GreedyToyPolicy

from vla_rl.core import noise
from vla_rl.core.benchmark import EnvConfig, EpisodeSpec
from vla_rl.core.slots import WorkerError
from vla_rl.rollout.engine import RolloutEngine

TESTS = Path(__file__).resolve().parent
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray not installed: pip install -e '.[ray]'"
)


# ---- a toy env that fails on cue -------------------------------------------------------------
class CuedFaultBenchmark(ToyBenchmark):
    """The toy benchmark whose env fails at its next step in an episode of init id N when the
    file `cue` holds "N MODE": it dies (os._exit), hangs (sleeps an hour) or raises. The env
    that deletes the file first is the one that fails, so a cue makes exactly one fault however
    many envs run that init id at once."""

    def __init__(self, cue: str):
        super().__init__()
        self.cue = cue

    def env_factory(self, cfg):
        return CuedFaultEnvFactory(cfg, self.cue)


@dataclass
class CuedFaultEnvFactory:
    cfg: EnvConfig
    cue: str

    def __call__(self):
        return CuedFaultEnv(self.cfg, self.cue)


class CuedFaultEnv(ToyEnv):
    def __init__(self, cfg, cue):
        super().__init__(cfg)
        self.cue = Path(cue)

    def reset(self, *, seed=None, options=None):
        self.init_id = options["init_id"]
        return super().reset(seed=seed, options=options)

    def step(self, action):
        try:
            init_id, mode = self.cue.read_text().split()
            if int(init_id) == self.init_id:
                self.cue.unlink()  # FileNotFoundError: another env took this fault
                if mode == "die":
                    os._exit(1)
                if mode == "hang":
                    time.sleep(3600)
                raise RuntimeError("the simulator went unstable (injected)")
        except FileNotFoundError:
            pass
        return super().step(action)


class HangOnceAtStartBenchmark(ToyBenchmark):
    """The toy benchmark whose first env ever built hangs while it is built (it leaves
    `marker` behind); every later build, the restarted worker's included, is a plain toy env."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def env_factory(self, cfg):
        return HangOnceAtStartFactory(cfg, self.marker)


@dataclass
class HangOnceAtStartFactory:
    cfg: EnvConfig
    marker: str

    def __call__(self):
        if not Path(self.marker).exists():
            Path(self.marker).touch()
            time.sleep(3600)
        return ToyEnv(self.cfg)


# ---- episodes and policies -------------------------------------------------------------------
class KeyedNoisyPolicy(GreedyToyPolicy):
    """GreedyToyPolicy plus N(0, noise^2) drawn from each row's episode key (vla_rl.core.noise):
    an episode run again after its worker was lost draws the same noise as the first time."""

    def sample_actions(self, obs, deterministic=False):
        sample = super().sample_actions(obs, deterministic=True)
        shape = tuple(sample.actions.shape[1:])
        eps = noise.standard_normal(noise.noise_keys(obs), len(sample.actions), shape, "toy")
        return dataclasses.replace(sample, actions=sample.actions + self.noise * eps)


CHUNKED = KeyedNoisyPolicy(chunk_size=2, noise=0.8)
SINGLE = KeyedNoisyPolicy(chunk_size=1, noise=1.0)
GRPO_HORIZON = 10  # env steps: short enough that groups mix successes and failures
LONG_HORIZON = 40


def grpo_batch():
    """3 groups of K = 4 episodes, each group from one (task, initial state)."""
    tasks = ToyBenchmark(GRPO_HORIZON).tasks("eval")  # the horizon travels with the task
    starts = [(tasks[0], 1001), (tasks[1], 1002), (tasks[0], 1003)]
    return [EpisodeSpec(t, i, group=g) for g, (t, i) in enumerate(starts) for _ in range(4)]


def long_batch():
    """24 episodes of up to 40 decision steps (chunks of 1), noisy: 200+ decision steps."""
    return [EpisodeSpec(t, i) for t in ToyBenchmark(LONG_HORIZON).tasks("eval")
            for i in t.init_ids[:12]]  # fmt: skip


def summarize(records):
    """What the learner sees of each episode: the actions taken, rewards, ends."""
    return [
        (r.spec.task.name, r.spec.init_id, r.spec.group, r.success, r.terminated, r.truncated,
         r.env_steps, r.rewards, [s.actions.numpy().tolist() for s in r.samples])
        for r in records
    ]  # fmt: skip


def rollout(venv, policy, episodes):
    engine = RolloutEngine(venv, pipeline_groups=2)
    records = engine.run(policy, episodes, keep_steps=True, seed=5)
    return summarize(records), engine.last_stats


# ---- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    """One Ray for the module: 2 CPUs, as the reference machine (Ray's testing tips: fix
    num_cpus, share the cluster between tests)."""
    import ray

    # The actors unpickle this folder's env factories, so their processes must find it; workers
    # inherit the environment Ray starts with.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cue(tmp_path_factory):
    return tmp_path_factory.mktemp("faults") / "cue"


@pytest.fixture(scope="module")
def ray_envs(ray_cluster, cue):
    """4 slots over 1 and over 2 Ray workers, half a CPU each (both fit the 2-CPU Ray at once,
    with room for one more worker)."""
    bench = CuedFaultBenchmark(str(cue))
    envs = {}
    try:
        for workers in (1, 2):
            cfg = EnvConfig(num_envs=4, num_workers=workers, backend="ray", step_timeout_s=60.0,
                            ray_worker_cpus=0.5)  # fmt: skip
            envs[workers] = bench.make_env([], cfg)
        yield envs
    finally:
        for venv in envs.values():
            venv.close()


@pytest.fixture(scope="module")
def local_records():
    """The local backend's records (in-process slots: test_rollout.py checks that its worker
    processes give the same)."""
    venv = ToyBenchmark().make_env([], EnvConfig(num_envs=4, num_workers=0))
    try:
        return rollout(venv, CHUNKED, grpo_batch())[0], rollout(venv, SINGLE, long_batch())[0]
    finally:
        venv.close()


# ---- tests -----------------------------------------------------------------------------------
def test_without_ray_the_backend_says_how_to_install_it(monkeypatch):
    from vla_rl.core.registry import BACKENDS, MissingExtraError

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [ray] extra were missing
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[ray\]"'):
        ToyBenchmark().make_env([], EnvConfig(num_envs=2, num_workers=1, backend="ray"))
    assert "ray" in BACKENDS.names()


@needs_ray
@pytest.mark.ray
def test_ray_keeps_the_local_backends_sampled_frames(ray_envs):
    """frames_per=F (SRPO's encoder frames): the actors' ChunkedEnvs keep the same frames."""
    kwargs = dict(seed=5, record_video=lambda i, s: True, frames_per=3)
    local = ToyBenchmark().make_env([], EnvConfig(num_envs=4, num_workers=0))
    try:
        want = RolloutEngine(local, pipeline_groups=2).run(CHUNKED, grpo_batch(), **kwargs)
        every = RolloutEngine(local, pipeline_groups=2).run(
            CHUNKED, grpo_batch(), **dict(kwargs, frames_per="chunk")
        )
    finally:
        local.close()
    got = RolloutEngine(ray_envs[2], pipeline_groups=2).run(CHUNKED, grpo_batch(), **kwargs)
    assert max(len(r.frames) for r in every) > 3  # some episodes had frames to drop
    assert [len(r.frames) for r in got] == [min(len(r.frames), 3) for r in every]
    for mine, theirs in zip(got, want):
        assert all(np.array_equal(a, b) for a, b in zip(mine.frames, theirs.frames))


@needs_ray
@pytest.mark.ray
@pytest.mark.parametrize("workers", [1, 2])
def test_ray_gives_the_local_backends_episodes(ray_envs, local_records, workers):
    venv = ray_envs[workers]
    assert venv.num_workers == workers
    restarts = list(venv.restarts)
    grpo, _ = rollout(venv, CHUNKED, grpo_batch())
    long, stats = rollout(venv, SINGLE, long_batch())
    assert venv.restarts == restarts  # no fault, nothing lost
    assert grpo == local_records[0] and long == local_records[1]
    assert stats.decision_steps >= 200
    assert {r[3] for r in grpo} == {True, False}  # successes and failures: a real contrast


@needs_ray
@pytest.mark.ray
@pytest.mark.parametrize("mode", ["die", "hang", "raise"])
def test_a_lost_worker_is_restarted_and_its_episodes_run_again(ray_envs, local_records, cue, mode):
    """The next step of an init-1002 episode (group 1) fails once: os._exit, a sleep past the
    timeout, or an exception. Its worker is restarted, the lost episodes run again with their
    own noise, and the records are those of a run without faults."""
    venv = ray_envs[2]
    restarts, lost = sum(venv.restarts), venv.lost_slots
    cue.write_text(f"1002 {mode}")
    venv.step_timeout_s = 3.0 if mode == "hang" else 60.0  # the hang costs the timeout
    try:
        records, stats = rollout(venv, CHUNKED, grpo_batch())
    finally:
        venv.step_timeout_s = 60.0
    assert not cue.exists()  # the fault happened
    assert records == local_records[0]  # and changed nothing the learner sees
    assert sum(venv.restarts) == restarts + 1, venv.losses
    assert venv.lost_slots > lost and stats.episodes_rerun >= 1
    expected = {"die": "died", "hang": "did not answer within 3 s", "raise": "unstable"}[mode]
    assert expected in venv.losses[-1]


@needs_ray
@pytest.mark.ray
def test_a_restart_between_requests_is_noticed(ray_envs, ray_cluster):
    """An actor that died while idle (here killed) is restarted by Ray before the next request
    reaches it: the reply from its fresh envs is not taken for the old ones'."""
    venv = ray_envs[1]
    restarts = venv.restarts[0]
    episodes = grpo_batch()[:4:3] + grpo_batch()[4:8:3]  # 4 slots, 2 episodes each of 2 groups
    venv.reset_slots(range(4), episodes)
    before = venv._incarnation[0]
    ray_cluster.kill(venv._workers[0], no_restart=False)
    while venv._wait_ready(0) == before:  # until Ray has restarted it (the kill is async);
        time.sleep(0.05)  # the backend itself has not heard of it
    action = venv.single_action_space.sample()[None, None].repeat(4, 0)
    assert all(r.lost for r in venv.step_wait(venv.step_async(range(4), action)))
    assert venv.restarts[0] == restarts + 1 and venv.episodes == [None] * 4
    assert "between requests" in venv.losses[-1]
    venv.reset_slots(range(4), episodes)
    assert not any(r.lost for r in venv.step_wait(venv.step_async(range(4), action)))


@needs_ray
@pytest.mark.ray
def test_a_refill_that_finds_its_worker_lost_keeps_the_other_slots_observable(ray_envs, cue):
    """The engine's order: one group's step in flight (slot 1's env dies in it), then a refill
    of the other group (slot 0), then that group is observed and stepped. Slot 2, on the lost
    worker but in neither request, still has its last observation; its step reports it lost."""
    venv = ray_envs[1]
    task = ToyBenchmark().tasks("eval")[0]
    venv.reset_slots(range(4), [EpisodeSpec(task, i) for i in (1000, 1001, 1002, 1003)])
    cue.write_text("1001 die")
    action = venv.single_action_space.sample()[None, None].repeat(2, 0)
    in_flight = venv.step_async([1, 3], action)
    venv.reset_slots([0], [EpisodeSpec(task, 1004)])  # lost, restarted, reset again
    assert not cue.exists()
    assert venv.observe([0, 2])["state"].shape == (2, 2)
    assert [r.lost for r in venv.step_wait(venv.step_async([0, 2], action))] == [False, True]
    assert [r.lost for r in venv.step_wait(in_flight)] == [True, True]


@needs_ray
@pytest.mark.ray
def test_a_worker_that_keeps_dying_ends_the_run_with_one_line(ray_cluster, tmp_path):
    bench = FaultyToyBenchmark(1001, str(tmp_path / "m"), "die", always=True)
    cfg = EnvConfig(num_envs=2, num_workers=1, backend="ray", ray_max_restarts=1,
                    ray_worker_cpus=0.5)  # fmt: skip
    venv = bench.make_env([], cfg)
    try:
        with pytest.raises(WorkerError, match="env worker 0 died .*, 2 times; giving up") as err:
            rollout(venv, CHUNKED, grpo_batch()[:4])
    finally:
        venv.close()
    assert "\n" not in str(err.value)


@needs_ray
@pytest.mark.ray
def test_more_cpus_than_the_cluster_has_is_one_line_not_a_hang(ray_cluster):
    cfg = EnvConfig(num_envs=3, num_workers=3, backend="ray")  # 3 x 1 CPU on a 2-CPU Ray
    with pytest.raises(WorkerError, match="need 3 CPUs, the Ray cluster has 2"):
        ToyBenchmark().make_env([], cfg)


@needs_ray
@pytest.mark.ray
def test_bench_scale_runs_the_same_work_on_both_backends(ray_envs, tmp_path):
    import json

    from vla_rl.cli import main

    out = tmp_path / "scale.json"
    # half a CPU: the module's shared envs hold 1.5 of the 2
    assert main(["bench-scale", "--backends", "local", "ray", "--workers", "1",
                 "--envs-per-worker", "2", "--env-steps", "32", "--max-steps", "16",
                 "--repeats", "1", "--env.ray-worker-cpus", "0.5",
                 "--output", str(out)]) == 0  # fmt: skip
    local, ray = json.loads(out.read_text())["runs"]
    assert (local["backend"], ray["backend"]) == ("local", "ray")
    for key in ("env_steps", "decision_steps", "num_envs"):
        assert local[key] == ray[key]
    assert json.loads(out.read_text())["table"][1]["over_local"] > 0


@needs_ray
@pytest.mark.ray
def test_workers_that_do_not_fit_beside_others_are_one_line_not_a_hang(ray_envs):
    """A run's training env holds its CPUs while an evaluation's env starts (before: the second
    env's actors waited for CPUs for ever). The module's envs hold 1.5 of the 2 CPUs, one more
    worker of 0.5 the rest."""
    cfg = EnvConfig(num_envs=1, num_workers=1, backend="ray", ray_worker_cpus=0.5)
    held = ToyBenchmark().make_env([], cfg)
    try:
        start = time.monotonic()
        with pytest.raises(WorkerError, match="need 0.5 CPUs, 0 of the Ray cluster's 2 are free"):
            ToyBenchmark().make_env([], cfg)
        assert time.monotonic() - start < 30
    finally:
        held.close()


@needs_ray
@pytest.mark.ray
def test_a_worker_hung_while_starting_is_restarted(ray_envs, tmp_path, monkeypatch):
    """Before: a worker stuck building its envs ended the run after the start timeout."""
    from vla_rl.rollout import ray_backend

    monkeypatch.setattr(ray_backend, "START_TIMEOUT_S", 15.0)  # a healthy start takes ~5 s
    bench = HangOnceAtStartBenchmark(str(tmp_path / "hung-once"))
    cfg = EnvConfig(num_envs=2, num_workers=1, backend="ray", step_timeout_s=15.0,
                    ray_worker_cpus=0.5)  # fmt: skip
    venv = bench.make_env([], cfg)
    try:
        assert (tmp_path / "hung-once").exists() and venv.restarts == [1]
        assert "did not start within 15 s; restarted" in venv.losses[0]
        records, stats = rollout(venv, CHUNKED, grpo_batch()[:4])
        assert len(records) == 4 and stats.episodes_rerun == 0
    finally:
        venv.close()
