"""`vla-rl compare`: the paired statistics (hand-checked), the refusals, the command, and two
evaluations of one seeded policy on the toy benchmark comparing as identical."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_benchmark import ToyBenchmark

from vla_rl.cli import main as cli
from vla_rl.evaluation.compare import IncomparableError, compare, read_side
from vla_rl.evaluation.stats import mcnemar_exact_p, paired_bootstrap_interval


def test_mcnemar_exact_p_by_hand():
    assert mcnemar_exact_p(0, 0) == 1.0  # no discordant pair: no evidence
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)  # 2 * P(X = 0), X ~ Bin(5, 1/2)
    assert mcnemar_exact_p(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact_p(3, 3) == 1.0  # 2 * 42 / 64 > 1: capped
    assert mcnemar_exact_p(2, 7) == mcnemar_exact_p(7, 2)


def test_paired_bootstrap_interval():
    a = [1, 0, 1, 0, 1, 1]
    tasks = ["x", "x", "x", "y", "y", "y"]
    assert paired_bootstrap_interval(a, a, tasks) == (0.0, 0.0)
    assert paired_bootstrap_interval([0] * 6, [1] * 6, tasks) == (1.0, 1.0)
    lo, hi = paired_bootstrap_interval([0] * 6, [1, 1, 1, 0, 0, 0], tasks)
    assert (lo, hi) == (0.5, 0.5)  # task x always +1, task y always 0: the mean over tasks
    rng = np.random.default_rng(0)
    a, b = rng.random(200) < 0.4, rng.random(200) < 0.6
    lo, hi = paired_bootstrap_interval(a, b, ["t"] * 200)
    assert lo < b.mean() - a.mean() < hi and hi - lo < 0.3
    assert (lo, hi) == paired_bootstrap_interval(a, b, ["t"] * 200)  # seeded


def results(successes: list[bool], deterministic=True, tasks=("x", "y")) -> dict:
    n = len(successes) // len(tasks)
    episodes = [{"task": tasks[i // n], "init_id": 100 + i % n, "success": s}
                for i, s in enumerate(successes)]  # fmt: skip
    protocol = {"benchmark": "toy", "split": "eval", "deterministic": deterministic,
                "observation": "state", "benchmark_version": {}, "seed": 0}  # fmt: skip
    return {"episodes": episodes, "protocol": protocol}


def test_identical_results_differ_by_zero_and_a_clear_gain_is_significant():
    base = [True, False] * 10
    same = compare(read_side(results(base), "A"), read_side(results(base), "B"))
    assert same["overall"]["difference"] == 0 and not same["overall"]["significant"]
    assert same["overall"]["mcnemar_p"] == 1.0 and same["overall"]["difference_ci95"] == [0, 0]
    better = compare(read_side(results(base), "A"), read_side(results([True] * 20), "B"))
    assert better["overall"]["difference"] == pytest.approx(0.5)
    assert better["overall"]["only_b"] == 10 and better["overall"]["significant"]
    assert better["per_task"]["x"]["only_b"] == 5


def test_results_measured_differently_are_refused():
    a = read_side(results([True] * 4), "A")
    with pytest.raises(IncomparableError, match="decoding mode"):
        compare(a, read_side(results([True] * 4, deterministic=False), "B"))
    with pytest.raises(IncomparableError, match="episode lists differ"):
        compare(a, read_side(results([True] * 6), "B"))
    with pytest.raises(IncomparableError, match="no protocol block"):
        read_side({"episodes": []}, "old")


def test_the_command_writes_the_comparison_and_refuses_in_one_line(tmp_path, capsys):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(results([True, False] * 10)))
    b.write_text(json.dumps(results([True] * 20)))
    c.write_text(json.dumps(results([True] * 20, deterministic=False)))
    out, plot = tmp_path / "cmp.json", tmp_path / "cmp.png"
    assert cli(["compare", str(a), str(b), "--output", str(out), "--plot", str(plot)]) == 0
    assert json.loads(out.read_text())["overall"]["only_b"] == 10 and plot.stat().st_size > 0
    assert "mean over tasks" in capsys.readouterr().out
    bad_out = tmp_path / "never.json"
    assert cli(["compare", str(a), str(c), "--output", str(bad_out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "decoding mode" in err and not bad_out.exists()
    assert cli(["compare", str(a)]) == 2  # one file without a base
    assert "no base results" in capsys.readouterr().err


def test_two_evaluations_of_one_seeded_stochastic_policy_compare_as_identical(tmp_path):
    """With per-episode noise, re-running the eval protocol reproduces every episode, even with
    another number of envs: compare reports 0 and no significance."""
    from test_policy_contract import build

    from vla_rl.core.benchmark import EnvConfig
    from vla_rl.evaluation.protocol import evaluate

    bench = ToyBenchmark(horizon=10)
    torch.manual_seed(0)
    policy = build("flow", bench, tmp_path)
    runs = []
    for num_envs in (2, 5):
        cfg = EnvConfig(num_envs=num_envs, num_workers=0, images=True, image_size=20, video_size=0)
        runs.append(evaluate(policy, bench, episodes_per_task=6, env_cfg=cfg, deterministic=False,
                             progress=False))  # fmt: skip
    assert runs[0]["success_definitions"]["any_step"] == runs[0]["success_rate"]
    result = compare(read_side(runs[0], "2 envs"), read_side(runs[1], "5 envs"))
    assert result["overall"]["difference"] == 0 and result["overall"]["mcnemar_p"] == 1.0
    assert [e["return"] for e in runs[0]["episodes"]] == [e["return"] for e in runs[1]["episodes"]]


def fake_run(seed: int, base: list[bool], result: list[bool]) -> dict:
    """A finetune results dict as final_results writes it (per task, episodes, base beside)."""
    from vla_rl.core.trajectories import EpisodeRecord
    from vla_rl.core.types import EpisodeSpec, TaskSpec
    from vla_rl.evaluation.protocol import summarize

    def summary(outcomes):
        records = []
        for i, s in enumerate(outcomes):
            task = TaskSpec("toy", "xy"[i % 2], "move", "eval", (), 10)
            r = EpisodeRecord(EpisodeSpec(task, 100 + i))
            r.success, r.terminated = s, s
            records.append(r)
        out = summarize(records)
        out["protocol"] = results([])["protocol"] | {"seed": seed}
        return out

    res = summary(result)
    res["base"] = summary(base)
    res["curve"] = [{"env_steps": 0, "success_rate": res["base"]["success_rate"]},
                    {"env_steps": 100 + seed, "success_rate": res["success_rate"]}]  # fmt: skip
    return res


def test_a_seed_sweep_runs_every_seed_aggregates_and_resumes(tmp_path):
    from vla_rl.runs.run import RunConfig
    from vla_rl.runs.sweep import format_sweep, run_seeds

    calls = []
    wins = {0: 14, 1: 16, 2: 18}  # successes of 20 after training; the base has 10

    def finetune(cfg):
        calls.append((cfg.seed, cfg.output_dir, cfg.resume))
        res = fake_run(cfg.seed, [True, False] * 10, [i < wins[cfg.seed] for i in range(20)])
        Path(cfg.output_dir).mkdir(parents=True)
        (Path(cfg.output_dir) / "results.json").write_text(json.dumps(res))
        return res

    cfg = RunConfig(output_dir=str(tmp_path / "sweep"))
    summary = run_seeds(cfg, (0, 1, 2), finetune)
    assert [c[0] for c in calls] == [0, 1, 2] and calls[1][1].endswith("seed-1")
    assert summary["success_rate"]["mean"] == pytest.approx(0.8)
    lo, hi = summary["success_rate"]["ci95"]  # sd 0.1, t(2) = 4.303: 0.8 +- 0.2484, cut at 1
    assert (lo, hi) == (pytest.approx(0.8 - 4.303 * 0.1 / 3**0.5), 1.0)
    assert summary["improvement"]["mean"] == pytest.approx(0.3)
    # Discordant episodes (base only, result only): seed 0 (3, 7), seed 1 (2, 8), seed 2 (1, 9);
    # McNemar p = 2 P(X <= k), X ~ Bin(10, 1/2): 0.344, 0.109, 0.0215.
    paired = summary["paired_vs_base"]
    assert [p["mcnemar_p"] for p in paired] == pytest.approx([352 / 1024, 112 / 1024, 22 / 1024])
    assert [p["significant"] for p in paired] == [False, False, True]
    assert (tmp_path / "sweep" / "sweep.json").is_file()
    assert (tmp_path / "sweep" / "sweep_curve.png").stat().st_size > 0
    assert "mean over tasks" in format_sweep(summary)
    calls.clear()  # a resumed sweep reads the finished seeds and runs only the missing one
    (tmp_path / "sweep" / "seed-2" / "results.json").unlink()
    import shutil

    shutil.rmtree(tmp_path / "sweep" / "seed-2")
    run_seeds(dataclasses.replace(cfg, resume=True), (0, 1, 2), finetune)
    assert [c[0] for c in calls] == [2] and calls[0][2] is False  # no checkpoint: a fresh run
    # a seed killed before its first checkpoint left only logs: --resume starts it again
    calls.clear()
    shutil.rmtree(tmp_path / "sweep" / "seed-2")
    (tmp_path / "sweep" / "seed-2").mkdir()
    (tmp_path / "sweep" / "seed-2" / "metrics.jsonl").write_text("{}\n")
    overwrites = []

    def finetune_into_a_left_directory(cfg):
        overwrites.append(cfg.overwrite)
        shutil.rmtree(cfg.output_dir)  # what --overwrite does to the directory
        return finetune(cfg)

    run_seeds(dataclasses.replace(cfg, resume=True), (0, 1, 2), finetune_into_a_left_directory)
    assert [c[0] for c in calls] == [2] and overwrites == [True] and calls[0][2] is False


def test_compare_evaluates_policies_on_the_same_episodes(tmp_path, capsys):
    """--policies: each policy through the eval protocol with the same seed, then compared."""
    out = tmp_path / "cmp.json"
    args = ["compare", "--policies", "scripted", "scripted", "zero", "--tasks",
            "button-press-topdown-v3", "--episodes", "2", "--env.num-envs", "2",
            "--env.num-workers", "0", "--output", str(out), "--no-progress"]  # fmt: skip
    assert cli(args) == 0
    same, worse = json.loads(out.read_text())
    assert same["overall"]["difference"] == 0 and same["overall"]["mcnemar_p"] == 1.0
    assert worse["overall"]["a"] == 1.0 and worse["overall"]["difference"] == -1.0
    assert cli(["compare", "a.json", "--policies", "scripted"]) == 2  # one or the other
    assert "not both" in capsys.readouterr().err
