"""The rollout throughput bench measures the same work in its four modes."""

from dataclasses import replace

from toy_benchmark import ToyBenchmark

from vla_rl.commands.bench import (
    BenchConfig,
    measure_engine,
    measure_gym_async,
    measure_raw,
    measure_sequential,
    simulator_processes,
)
from vla_rl.core.benchmark import EnvConfig


def test_three_modes_count_env_steps():
    bench = ToyBenchmark()
    cfg = BenchConfig(steps=400, max_steps=20, env=EnvConfig(num_envs=4, num_workers=1))
    task = replace(bench.tasks("train", ["left"])[0], max_steps=cfg.max_steps)
    raw, engine, seq = (fn(bench, task, cfg) for fn in (measure_raw, measure_engine,
                                                         measure_sequential))  # fmt: skip
    assert raw["env_steps"] >= 400 and raw["processes"] == 1
    # 20 episodes of at most 20 steps (a start within reach of the target ends one early)
    assert 300 < engine["env_steps"] <= 400
    assert seq["env_steps"] == 200
    assert all(r["env_steps_per_s"] > 0 for r in (raw, engine, seq))


def test_gym_async_vector_env_row_autoresets_into_the_task():
    """Ta = 3 and a horizon of 20: episodes end mid-chunk, so gymnasium's autoreset (which calls
    reset() without options; a toy env then fails) runs inside the measured loop."""
    bench = ToyBenchmark()
    cfg = BenchConfig(steps=120, max_steps=20, chunk_size=3, env=EnvConfig(num_envs=2))
    task = replace(bench.tasks("train", ["left"])[0], max_steps=cfg.max_steps)
    row = measure_gym_async(bench, task, cfg)
    assert row["env_steps"] == 120 and row["processes"] == 2 and row["env_steps_per_s"] > 0


def test_every_bench_table_has_the_gym_async_row(tmp_path, monkeypatch, capsys):
    import json

    import vla_rl.commands.bench as bench_cmd

    monkeypatch.setattr(bench_cmd, "get_benchmark", lambda name, env: ToyBenchmark())
    for mode, rate in (("raw", 100.0), ("engine", 90.0), ("sequential", 45.0), ("gym_async", 60.0)):
        row = {"env_steps": 10, "wall_s": 10 / rate, "env_steps_per_s": rate}
        monkeypatch.setattr(bench_cmd, f"measure_{mode}", lambda *a, row=row: row)
    cfg = BenchConfig(repeats=1, output=str(tmp_path / "bench.json"))
    assert bench_cmd.run_rollout_bench(cfg) == 0
    results = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert len(results["runs"]["gym_async"]) == 1
    assert results["engine_over_gym_async"] == 1.5
    assert "engine / gym_async  = 1.50" in capsys.readouterr().out


def test_raw_baseline_gets_the_engines_process_count():
    assert simulator_processes(EnvConfig(num_envs=8, num_workers=2)) == 2
    assert simulator_processes(EnvConfig(num_envs=8, num_workers=1, main_envs=3)) == 2
    assert simulator_processes(EnvConfig(num_envs=8, num_workers=0)) == 1


def test_policy_bench_runs_the_same_episodes_both_ways(tmp_path):
    import json

    from vla_rl.commands.bench_policy import PolicyBenchConfig, run_policy_bench

    cfg = PolicyBenchConfig(
        policy="zero", tasks=("reach-v3",), episodes=2, batch_sizes=(1, 4), latency_calls=2,
        output=str(tmp_path / "bench.json"),
        env=EnvConfig(num_envs=2, num_workers=0, video_size=0, max_steps=30),
    )  # fmt: skip
    res = run_policy_bench(cfg)
    t = res["throughput"]
    assert t["engine"]["env_steps"] == t["sequential"]["env_steps"] == 2 * 30
    assert set(res["latency_s_per_chunk"]) == {"1", "4"}
    assert json.loads((tmp_path / "bench.json").read_text())["provenance"]["git_commit"]


def test_policy_bench_times_reranking_against_one_sample_and_naive_batching():
    from vla_rl.commands.bench_policy import PolicyBenchConfig, run_policy_bench

    cfg = PolicyBenchConfig(
        policy="metaworld-flow", tasks=("reach-v3",), episodes=0, batch_sizes=(1,),
        latency_calls=1, rerank="random", candidates=4,
    )  # fmt: skip
    res = run_policy_bench(cfg)
    for key in ("latency_s_per_chunk", "single_latency_s_per_chunk",
                "naive_rerank_latency_s_per_chunk"):  # fmt: skip
        assert res[key]["1"] > 0
