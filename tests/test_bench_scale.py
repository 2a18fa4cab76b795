"""`vla-rl bench-scale` and its simulated benchmark: the step cost is CPU time, episodes are
deterministic, and the time split adds up to the wall time it splits."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from vla_rl.benchmarks.simulated import SimulatedBenchmark, burn_cpu
from vla_rl.cli import main
from vla_rl.commands.bench_scale import BenchScaleConfig, summarize
from vla_rl.core.benchmark import EnvConfig


def test_burn_cpu_uses_cpu_time_not_wall_time():
    start_cpu, start_wall = time.thread_time(), time.perf_counter()
    burn_cpu(0.02)
    assert time.thread_time() - start_cpu >= 0.02
    assert time.perf_counter() - start_wall >= 0.02  # CPU time cannot outrun the wall clock


def test_simulated_env_costs_its_step_and_carries_its_camera():
    bench = SimulatedBenchmark(step_ms=5.0, image_size=16, horizon=3)
    task = bench.tasks("train")[0]
    env = bench.env_factory(EnvConfig())()
    obs, _ = env.reset(options={"task": task, "init_id": 7})
    again, _ = bench.env_factory(EnvConfig())().reset(options={"task": task, "init_id": 7})
    np.testing.assert_array_equal(obs["state"], again["state"])  # the init id decides
    assert obs["state"].shape == (39,) and obs["image"].shape == (1, 16, 16, 3)
    start = time.thread_time()
    ends = [env.step(np.ones(4, np.float32))[3] for _ in range(3)]
    assert time.thread_time() - start >= 0.015
    assert ends == [False, False, True]  # truncated at the horizon, never a success
    assert set(bench.tasks("train")[0].init_ids).isdisjoint(bench.tasks("eval")[0].init_ids)


def test_bench_scale_measures_every_configuration_and_its_split_adds_up(tmp_path, capsys):
    out = tmp_path / "scale.json"
    code = main(["bench-scale", "--backends", "local", "--workers", "1", "--envs-per-worker",
                 "1", "2", "--env-steps", "48", "--max-steps", "16", "--step-ms", "1",
                 "--repeats", "1", "--output", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    table = result["table"]
    assert [(r["workers"], r["envs_per_worker"], r["num_envs"]) for r in table] == [
        (1, 1, 1), (1, 2, 2)]  # fmt: skip
    assert result["env_step_ms_measured"] >= 1.0  # the step's burn, measured, not assumed
    for row, run in zip(table, result["runs"]):
        # 3 episodes of 16 steps, rounded up to whole waves of B (nothing ends early here)
        assert run["env_steps"] == {1: 48, 2: 64}[run["num_envs"]]
        assert run["learner_decision_steps"] == run["decision_steps"] > 0
        parts = run["env_s"] + run["inference_s"] + run["transfer_sync_s"]
        assert parts == pytest.approx(run["rollout_s"], rel=1e-6)  # the split adds up
        assert sum(row["split_fraction"].values()) == pytest.approx(1.0, rel=1e-6)
    assert "provenance" in result and result["config"]["backends"] == ["local"]


def test_summary_takes_medians_and_ratios_at_equal_workers():
    def run(backend, rate, rnd):
        keys = ("env_s", "inference_s", "transfer_sync_s", "learner_s", "rollout_s")
        return dict({k: 1.0 for k in keys}, backend=backend, workers=2, envs_per_worker=4,
                    num_envs=8, env_steps_per_s=rate, env_steps_per_s_with_learner=rate,
                    round=rnd)  # fmt: skip

    runs = [run("local", r, i) for i, r in enumerate((100.0, 300.0, 200.0))]
    runs += [run("ray", r, i) for i, r in enumerate((150.0, 160.0, 170.0))]
    local, ray = summarize(runs)
    assert local["env_steps_per_s"] == 200.0 and local["rounds"] == 3
    assert ray["over_local"] == pytest.approx(160.0 / 200.0)  # ratio of medians
    assert ray["over_local_paired"] == pytest.approx(170.0 / 200.0)  # median of 1.5, .53, .85
    assert "over_local" not in local


def test_config_defaults_state_the_scaling_grid():
    cfg = BenchScaleConfig()
    assert cfg.workers == (1, 2, 4) and cfg.envs_per_worker == (1, 4, 16)
    assert cfg.env.pipeline_groups == 1  # so that the split adds up
