"""The `ray` backend (vla_rl/rollout/ray_backend.py) on a multi-node Ray cluster, simulated on
this machine with ray.cluster_utils.Cluster: a head node and a second node, each with its own
raylet and CPUs. The driver joins it by its HOST:PORT address (EnvConfig.ray_address, the
`--env.ray-address` path of `connect`); env workers on both nodes give the local backend's
episodes; the second node removed in the middle of a rollout loses its worker, which Ray
restarts on the head node, and the rollout ends with the same records.

The cluster lives in a subprocess (`scenario`, below): a Cluster cannot share a process with the
2-CPU Ray that tests/test_ray_backend.py starts, and its own Ray temp dir (RAY_TMPDIR) keeps
its address file from other drivers on this machine (a `ray.init()` without an address joins
the cluster named there). The subprocess writes what it saw as JSON; the tests compare it here.

Placement is forced by CPU counts, not left to Ray's scheduler: the head node has 3 CPUs, the
second node 1. A one-worker env of 2 CPUs, which only the head fits, joins the cluster first;
then 2 workers of 1 CPU each can only go one per node. Closing the 2-CPU env before the node
is removed leaves the head room for the lost worker.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_ray_backend import CHUNKED, KeyedNoisyPolicy, grpo_batch, rollout
from toy_benchmark import ToyBenchmark, ToyEnv

from vla_rl.core.benchmark import EnvConfig

TESTS = Path(__file__).resolve().parent
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray not installed: pip install -e '.[ray]'"
)
HEAD_CPUS, NODE_CPUS = 3, 1
REMOVE_AT_CALL = 6  # of the ~30 policy calls of one grpo_batch rollout over 4 slots
SCENARIO_TIMEOUT_S = 240  # a healthy run takes well under a minute


# ---- an env that says where it runs ----------------------------------------------------------
class WhereToyBenchmark(ToyBenchmark):
    """The toy benchmark whose envs answer `call("where")` with (Ray node id, niceness)."""

    def env_factory(self, cfg):
        return WhereToyEnvFactory(cfg)


@dataclass
class WhereToyEnvFactory:
    cfg: EnvConfig

    def __call__(self):
        return WhereToyEnv(self.cfg)


class WhereToyEnv(ToyEnv):
    def where(self) -> tuple[str, int]:
        import ray

        return ray.get_runtime_context().get_node_id(), os.nice(0)


class HookedPolicy(KeyedNoisyPolicy):
    """KeyedNoisyPolicy (the same actions for the same episodes) that runs `hooks[n]()` in the
    driver before its n-th sample_actions call: a fault in the middle of a rollout."""

    def __init__(self, chunk_size, noise, hooks):
        super().__init__(chunk_size=chunk_size, noise=noise)
        self.hooks, self.calls = dict(hooks), 0

    def sample_actions(self, obs, deterministic=False):
        self.calls += 1
        if hook := self.hooks.pop(self.calls, None):
            hook()
        return super().sample_actions(obs, deterministic)


# ---- the scenario, run in a subprocess -------------------------------------------------------
def scenario(out_path: str) -> None:
    """Start the 2-node cluster, run the backend on it and write what happened to out_path."""
    import ray
    import torch
    from ray.cluster_utils import Cluster

    from vla_rl.rollout import ray_backend

    torch.set_num_threads(1)
    ray_backend.START_TIMEOUT_S = 60.0  # a worker that cannot start fails here, in bounded time
    t0 = time.monotonic()
    out: dict = {}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": HEAD_CPUS, "include_dashboard": False}
    )
    envs = []
    try:
        node = cluster.add_node(num_cpus=NODE_CPUS)
        cluster.wait_for_nodes()
        out.update(address=cluster.address, head=cluster.head_node.node_id, node=node.node_id)
        out["initialized_before"] = ray.is_initialized()
        bench = WhereToyBenchmark()  # grpo_batch's tasks carry their horizon

        def cfg(**kw):
            return EnvConfig(backend="ray", ray_address=cluster.address, step_timeout_s=60.0, **kw)

        # A worker bigger than every node (the cluster's 4 CPUs in all would hold it) is
        # refused at once, not left to wait for ever; this first env joins the cluster.
        start = time.monotonic()
        try:
            bench.make_env([], cfg(num_envs=1, num_workers=1, ray_worker_cpus=HEAD_CPUS + 0.5))
        except Exception as e:  # noqa: BLE001 - the test checks what it was
            out["too_big"] = f"{type(e).__name__}: {e}"
        out["t_too_big"] = time.monotonic() - start
        # Then an env that holds 2 of the head's CPUs.
        holder = bench.make_env([], cfg(num_envs=1, num_workers=1, ray_worker_cpus=2.0))
        envs.append(holder)
        out["joined"] = ray.get_runtime_context().gcs_address
        out["cluster_cpus"] = ray.cluster_resources().get("CPU")
        out["holder_where"] = holder.call("where")
        venv = bench.make_env([], cfg(num_envs=4, num_workers=2, ray_worker_cpus=1.0))
        envs.append(venv)
        out["owner"] = list(venv._owner)  # slot -> (worker, local index)
        out["where"] = venv.call("where")
        out["driver_nice"] = os.nice(0)
        out["t_started"] = time.monotonic() - t0

        out["calm"] = rollout(venv, CHUNKED, grpo_batch())[0]
        out["calm_restarts"] = list(venv.restarts)
        holder.close()  # the head now has room for the worker that the removal will lose

        def remove_node():
            start = time.monotonic()
            cluster.remove_node(node)  # kills its raylet and the env worker on it
            out["t_remove"] = time.monotonic() - start

        policy = HookedPolicy(CHUNKED.chunk_size, CHUNKED.noise, {REMOVE_AT_CALL: remove_node})
        out["faulty"], stats = rollout(venv, policy, grpo_batch())
        out["policy_calls"] = policy.calls
        out["restarts"], out["losses"] = list(venv.restarts), list(venv.losses)
        out["episodes_rerun"], out["lost_slots"] = stats.episodes_rerun, venv.lost_slots
        out["where_after"] = venv.call("where")
        out["alive"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        out["t_total"] = time.monotonic() - t0
    finally:
        for env in envs:
            env.close()
        ray.shutdown()
        cluster.shutdown()
    Path(out_path).write_text(json.dumps(out, default=_numpy_to_json))


def _numpy_to_json(x):
    """json.dumps' fallback for the numpy values in records (floats round-trip exactly)."""
    return x.tolist()


def as_json(x):
    """x as the scenario's JSON gives it back (tuples become lists), to compare with it."""
    return json.loads(json.dumps(x, default=_numpy_to_json))


# ---- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multinode(tmp_path_factory):
    """What `scenario` saw, run once for the module in a subprocess."""
    out = tmp_path_factory.mktemp("multinode") / "result.json"
    # Short: Ray's unix sockets live under it (a path of at most 107 bytes).
    ray_tmp = tempfile.mkdtemp(prefix="vlarl-ray-", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_worker_niceness="0", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env.pop("RAY_ADDRESS", None)
    code = "import sys, test_ray_multinode as t; t.scenario(sys.argv[1])"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(out)],
            env=env,
            cwd=TESTS.parent,
            capture_output=True,
            text=True,
            timeout=SCENARIO_TIMEOUT_S,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, (
        f"the scenario failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    )
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def local_records():
    venv = ToyBenchmark().make_env([], EnvConfig(num_envs=4, num_workers=0))
    try:
        return as_json(rollout(venv, CHUNKED, grpo_batch())[0])
    finally:
        venv.close()


# ---- tests -----------------------------------------------------------------------------------
@needs_ray
@pytest.mark.ray
def test_the_driver_joins_the_cluster_by_its_address(multinode):
    """connect with EnvConfig.ray_address = HOST:PORT joined that cluster (its 2 nodes, 4 CPUs),
    not a Ray of its own (which would be 1 node of 4 CPUs per core)."""
    assert re.fullmatch(r"[\w.\-]+:\d+", multinode["address"])
    assert not multinode["initialized_before"]
    assert multinode["joined"] == multinode["address"]
    assert multinode["cluster_cpus"] == HEAD_CPUS + NODE_CPUS
    # the 2-CPU env fits the head only
    assert [node for node, _ in multinode["holder_where"]] == [multinode["head"]]


@needs_ray
@pytest.mark.ray
def test_a_worker_bigger_than_every_node_is_refused_at_once(multinode):
    assert HEAD_CPUS + 0.5 <= HEAD_CPUS + NODE_CPUS  # the cluster's total would hold it
    assert "largest node of the Ray cluster has 3" in multinode["too_big"], multinode["too_big"]
    assert "--env.ray-worker-cpus" in multinode["too_big"]
    assert multinode["t_too_big"] < 30


@needs_ray
@pytest.mark.ray
def test_workers_on_two_nodes_give_the_local_backends_episodes(multinode, local_records):
    head, node = multinode["head"], multinode["node"]
    assert head != node
    on = {}  # worker -> the nodes its slots' envs ran on
    for (worker, _), (where, _) in zip(multinode["owner"], multinode["where"]):
        on.setdefault(worker, set()).add(where)
    assert sorted(on) == [0, 1] and all(len(nodes) == 1 for nodes in on.values())
    assert set.union(*on.values()) == {head, node}  # one worker per node
    assert multinode["calm_restarts"] == [0, 0]
    assert multinode["calm"] == local_records
    assert {r[3] for r in local_records} == {True, False}  # successes and failures


@needs_ray
@pytest.mark.ray
def test_nodes_started_with_ray_worker_niceness_0_run_env_workers_at_0(multinode):
    """The backend's connect docstring: a cluster's nodes need RAY_worker_niceness=0 (Ray's
    default is 15) for its env workers to run at the driver's niceness."""
    assert {nice for _, nice in multinode["where"]} == {multinode["driver_nice"]}


@needs_ray
@pytest.mark.ray
def test_a_node_removed_mid_rollout_loses_its_worker_and_changes_no_record(
    multinode, local_records
):
    head, node = multinode["head"], multinode["node"]
    lost = {
        w for (w, _), (where, _) in zip(multinode["owner"], multinode["where"]) if where == node
    }
    assert len(lost) == 1
    (lost,) = lost
    assert multinode["policy_calls"] > REMOVE_AT_CALL  # the rollout went on after the removal
    assert multinode["alive"] == [head]
    assert multinode["restarts"] == [int(w == lost) for w in range(2)], multinode["losses"]
    assert "died" in multinode["losses"][-1]
    assert multinode["lost_slots"] >= 1 and multinode["episodes_rerun"] >= 1
    assert multinode["faulty"] == local_records  # the lost episodes ran again, the same
    assert [where for where, _ in multinode["where_after"]] == [head] * 4  # restarted on the head
