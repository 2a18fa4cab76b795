"""The eval protocol: summaries, results.json contents, CLI errors that leave nothing behind."""

import json

import pytest
from toy_benchmark import ToyBenchmark
from toy_policies import GreedyToyPolicy

from vla_rl.cli import main
from vla_rl.core.benchmark import EnvConfig, EpisodeSpec
from vla_rl.core.trajectories import EpisodeRecord
from vla_rl.evaluation.protocol import evaluate, format_table, summarize


def test_summarize_by_hand():
    task_a, task_b = ToyBenchmark().tasks("eval")
    records = [EpisodeRecord(EpisodeSpec(task_a, i), success=s, env_steps=10)
               for i, s in zip(range(4), [True, True, False, True])]  # fmt: skip
    records += [EpisodeRecord(EpisodeSpec(task_b, i), success=False, env_steps=30)
                for i in range(4)]  # fmt: skip
    out = summarize(records)
    assert out["per_task"]["left"]["success_rate"] == 0.75
    assert out["per_task"]["right"]["success_rate"] == 0.0
    assert out["success_rate"] == pytest.approx(0.375)
    assert out["successes"] == 3 and out["num_episodes"] == 8
    lo, hi = out["per_task"]["left"]["ci95"]
    assert 0 < lo < 0.75 < hi < 1
    assert [e["success"] for e in out["episodes"][:4]] == [True, True, False, True]
    assert "mean over tasks" in format_table(out)


def test_evaluate_writes_results_with_config_and_commit(tmp_path):
    results = evaluate(
        GreedyToyPolicy(), ToyBenchmark(), episodes_per_task=5, progress=False,
        env_cfg=EnvConfig(num_envs=2, num_workers=0), output_dir=tmp_path,
        config={"hello": 1}, videos_per_task=1,
    )  # fmt: skip
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["success_rate"] == results["success_rate"] == 1.0
    assert set(saved["per_task"]) == {"left", "right"}
    assert len(saved["episodes"]) == 10
    assert {e["init_id"] for e in saved["episodes"]} == set(range(1000, 1005))  # eval split
    assert saved["config"] == {"hello": 1}
    assert saved["provenance"]["git_commit"] and "torch" in saved["provenance"]["packages"]
    videos = sorted(p.name for p in (tmp_path / "videos").iterdir())
    assert len(videos) == 2 and all(v.endswith(".mp4") for v in videos)


def test_eval_cli_on_metaworld(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--policy", "scripted", "--benchmark", "metaworld", "--tasks", "reach-v3",
                 "--episodes", "3", "--env.num-envs", "3", "--env.num-workers", "1",
                 "--output-dir", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["success_rate"] == 1.0 and saved["num_episodes"] == 3
    assert saved["config"]["env"]["num_envs"] == 3
    assert "reach-v3" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "--benchmark", "nope"], "valid choices: metaworld"),
        (["eval", "--tasks", "MT11"], "valid task sets: MT10, MT50"),
        (["eval", "--policy", "nope"], "valid choices: scripted"),
        (["eval", "--policy", "missing/dir"], "not a checkpoint directory"),
        (["eval", "--tasks", "reach-v3", "--episodes", "51"], "valid: 1..50"),
        (["eval", "--episodes", "0"], "must be >= 1"),
        (["eval", "--config", "missing.yaml"], "config file not found"),
        (["finetune", "--method", "nope"], "unknown method 'nope'; valid choices: residual"),
        (["finetune", "--base", "nope"], "valid choices: scripted"),
        (["finetune", "--tasks", "nope-v3"], "valid task sets: MT10"),
        (["finetune", "--env-steps", "0"], "must be >= 1"),
        (["finetune", "--residual.demo-fraction", "1.5"], "demo-fraction must be in [0, 1)"),
        (["finetune", "--residual.demos", "missing/dir"], "valid choices: scripted, none"),
        (["finetune", "--resume"], "no checkpoint in"),
        (["nope"], "valid choices: finetune, eval, collect, pretrain, fit-verifier, benchmarks"),
    ],
)
def test_bad_input_gives_clear_error_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "should-not-exist"
    with_out = args[0] in ("eval", "finetune")
    code = main([*args, "--output-dir", str(out)] if with_out else args)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_benchmarks_listing(capsys):
    assert main(["benchmarks", "--name", "metaworld"]) == 0
    text = capsys.readouterr().out
    assert "set MT10: 10 tasks" in text and "pick-place-v3" in text
