"""Bad input gets one clear line and exit status 2, before anything is built or written.

Each case runs the real CLI (`vla_rl.cli.main`) with its output location under tmp_path and
checks: status 2, exactly one line on stderr, the line names the field, and the output location
was not created. No case starts a simulator: the errors fire while the config is checked, which
keeps this file fast.
"""

from __future__ import annotations

import pytest

from vla_rl.cli import main

# command -> the flag naming its output location
OUTPUT_FLAG = {
    "finetune": "--output-dir",
    "eval": "--output-dir",
    "collect": "--output",
    "pretrain": "--output-dir",
    "bench": "--output",
    "bench-policy": "--output",
    "bench-scale": "--output",
    "fit-verifier": "--output-dir",
}

CASES = [
    # ---- parse errors: one line, the close valid flag suggested -------------------------------
    ("finetune", ["--env-step", "5"], "did you mean --env-steps?"),
    ("finetune", ["--env_step=5"], "did you mean --env-steps?"),
    ("eval", ["--episodes", "abc"], "--episodes: 'abc' is not an int"),
    ("eval", ["--episodes"], "--episodes"),
    ("eval", ["--seed", "1.5"], "--seed"),
    ("eval", ["--env.images", "maybe"], "--env.images"),
    ("eval", ["stray"], "'stray'"),
    ("finetune", ["--method", "grpo", "--grpo.lr", "abc"], "--grpo.lr"),
    # ---- non-finite floats anywhere in the tree ------------------------------------------------
    ("finetune", ["--method", "grpo", "--grpo.lr", "inf"], "--grpo.lr: inf is not a finite"),
    ("finetune", ["--residual.gamma", "nan"], "--residual.gamma: nan is not a finite"),
    ("finetune", ["--ppo.reward-weights", "1.0", "inf"], "--ppo.reward-weights"),
    # ---- impossible env settings (EnvConfig, for every command) --------------------------------
    ("finetune", ["--env.num-envs", "0"], "--env.num-envs"),
    ("finetune", ["--env.num-workers", "-1"], "--env.num-workers"),
    ("finetune", ["--env.pipeline-groups", "0"], "--env.pipeline-groups"),
    ("finetune", ["--env.main-envs", "-1"], "--env.main-envs"),
    ("finetune", ["--env.num-envs", "4", "--env.main-envs", "5"], "--env.main-envs"),
    ("finetune", ["--env.images", "--env.image-size", "0"], "--env.image-size"),
    ("finetune", ["--env.max-steps", "0"], "--env.max-steps"),
    ("eval", ["--env.num-envs", "0"], "--env.num-envs"),
    ("collect", ["--env.num-workers", "-1"], "--env.num-workers"),
    ("bench", ["--env.num-envs", "0"], "--env.num-envs"),
    ("bench-policy", ["--env.pipeline-groups", "0"], "--env.pipeline-groups"),
    # ---- per-command and per-method rules ------------------------------------------------------
    ("finetune", ["--residual.save-every", "0"], "--residual.save-every"),
    ("finetune", ["--residual.gamma", "0"], "--residual.gamma"),
    ("finetune", ["--residual.gamma", "1.5"], "--residual.gamma"),
    ("finetune", ["--residual.tau", "0"], "--residual.tau"),
    ("finetune", ["--residual.tau", "2"], "--residual.tau"),
    ("finetune", ["--env-steps", "0"], "--env-steps"),
    (
        "finetune",
        ["--method", "grpo", "--grpo.group-size", "8", "--grpo.episodes-per-step", "4"],
        "--grpo.group-size",
    ),
    ("finetune", ["--method", "grpo", "--grpo.group-size", "1"], "--grpo.group-size"),
    ("finetune", ["--method", "grpo", "--grpo.dual-clip", "0.5"], "--grpo.dual-clip"),
    ("finetune", ["--method", "ppo", "--ppo.dual-clip", "1"], "--ppo.dual-clip"),
    ("pretrain", ["--dataset", "missing", "--lr", "inf"], "--lr"),
    ("pretrain", ["--dataset", "missing", "--lr", "0"], "--lr"),
    ("collect", ["--action-noise", "nan"], "--action-noise"),
    ("collect", ["--action-noise", "-1"], "--action-noise"),
    ("bench", ["--max-steps", "0"], "--max-steps"),
    ("bench", ["--steps", "0"], "--steps"),
    ("bench-scale", ["--backends", "local", "mpi"], "--backends: ['mpi']; valid choices"),
    ("bench-scale", ["--workers", "2", "0"], "--workers"),
    ("bench-scale", ["--env-steps", "0"], "--env-steps"),
    ("bench-scale", ["--benchmark", "nope"], "valid choices: simulated, metaworld"),
    ("bench-scale", ["--benchmark", "metaworld", "--step-ms", "2"], "--step-ms"),
    ("eval", ["--episodes", "0"], "--episodes"),
    ("fit-verifier", ["--cfn.lr", "nan"], "--cfn.lr"),
    ("fit-verifier", ["--noised-draws", "-1"], "--noised-draws"),
]


def run_cli(capsys, command: str, args: list[str], out) -> str:
    code = main([command, *args, OUTPUT_FLAG[command], str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"vla-rl {command}: error: "), lines[0]
    assert not out.exists(), f"{out} was created"
    return lines[0]


@pytest.mark.parametrize(
    ("command", "args", "names"), CASES, ids=[" ".join([c, *a]) for c, a, _ in CASES]
)
def test_bad_flag(capsys, tmp_path, command, args, names):
    line = run_cli(capsys, command, args, tmp_path / "out")
    assert names in line


YAML_CASES = [
    ("malformed", "env: [1, 2\n", "invalid YAML"),
    ("tab", "env:\n\tnum_envs: 2\n", "invalid YAML"),
    ("string-for-int", "env_steps: abc\n", "env_steps: 'abc' is not an int"),
    ("string-for-float", "residual:\n  gamma: high\n", "residual.gamma"),
    ("bool-for-int", "eval_episodes: true\n", "eval_episodes"),
    ("scalar-for-section", "env: 4\n", "env: 4 is not a section"),
    ("list-for-scalar", "seed: [1, 2]\n", "seed"),
    ("scalar-for-list", "tasks: 3\n", "tasks"),
    ("unknown-field", "env_step: 5\n", "did you mean env_steps?"),
    ("unknown-nested", "env:\n  num_env: 2\n", "env.num_env"),
    ("not-a-mapping", "- 1\n- 2\n", "mapping"),
    ("non-finite", "residual:\n  tau: .inf\n", "--residual.tau: inf is not a finite"),
    ("impossible", "env:\n  num_envs: 0\n", "--env.num-envs"),
]


@pytest.mark.parametrize(
    ("text", "names"), [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES]
)
def test_bad_yaml(capsys, tmp_path, text, names):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    line = run_cli(capsys, "finetune", ["--config", str(path)], tmp_path / "out")
    assert names in line
    if "--" not in names:  # errors in the file itself say which file
        assert str(path) in line


def test_missing_config_file(capsys, tmp_path):
    line = run_cli(capsys, "eval", ["--config", str(tmp_path / "nope.yaml")], tmp_path / "out")
    assert "nope.yaml" in line


def test_yaml_values_of_the_right_type_still_load(tmp_path):
    from vla_rl.commands.finetune import FinetuneConfig
    from vla_rl.core.config import parse_cli

    path = tmp_path / "ok.yaml"
    path.write_text(
        "env_steps: 100\ntasks: [a, b]\nfinal_eval_episodes: null\n"
        "residual: {gamma: 1, actor_lr: 1e-4}\nenv: {max_steps: 50, images: false}\n"
    )
    cfg = parse_cli(FinetuneConfig, ["--config", str(path), "--seed", "3"], prog="t")
    assert (cfg.env_steps, cfg.tasks, cfg.seed) == (100, ("a", "b"), 3)
    assert cfg.residual.gamma == 1.0 and cfg.residual.actor_lr == 1e-4
    assert cfg.env.max_steps == 50


def test_help_still_prints_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--help"])
    assert exit_.value.code in (0, None)
    assert "--env.num-envs" in capsys.readouterr().out


def test_a_missing_optional_extra_is_one_line_with_the_install_hint(tmp_path, capsys, monkeypatch):
    import sys

    from vla_rl.cli import main

    for name in [m for m in sys.modules if m == "libero" or m.startswith("libero.")] + ["libero"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if the [libero] extra were missing
    out = tmp_path / "out"
    code = main(["eval", "--benchmark", "libero_spatial", "--policy", "zero", "--episodes", "1",
                 "--output-dir", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install -e '.[libero]'" in err[0]
    assert not out.exists()
