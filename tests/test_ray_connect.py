"""The Ray that `--env.backend ray` starts on this machine runs its env workers at niceness 0,
as the local backend's processes (Ray's default, 15, yields the simulator's core to the
driver's inference), with 4 logical CPUs per core. Its own file: it starts and stops a Ray of
its own."""

from __future__ import annotations

import importlib.util
import os

import pytest

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray not installed: pip install -e '.[ray]'"
)


@needs_ray
@pytest.mark.ray
def test_the_ray_started_here_runs_env_workers_at_niceness_0(monkeypatch):
    import ray

    from vla_rl.rollout.ray_backend import connect

    if ray.is_initialized():
        ray.shutdown()

    @ray.remote(num_cpus=1)
    class Probe:
        def niceness(self) -> int:
            return os.nice(0)

    # without --env.ray-address a Ray of its own, even where the environment names a cluster
    # (ray.init() without an address would try to join it, and fail: nothing listens there)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    connect(ray, None, 1)
    try:
        assert ray.get(Probe.remote().niceness.remote(), timeout=120) == os.nice(0)
        # 4 logical CPUs per core: a training env and an evaluation's fit beside each other
        assert ray.cluster_resources()["CPU"] == 4 * os.cpu_count()
    finally:
        ray.shutdown()
