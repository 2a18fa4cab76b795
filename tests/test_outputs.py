"""Outputs that never destroy: an existing file is never replaced by an output directory, a run
directory that holds something needs --resume or --overwrite, and what killed writers left
behind is cleaned at the next start (and never read)."""

import os

import pytest

from vla_rl.cli import main
from vla_rl.io.atomic import atomic_directory, check_output_location, remove_stale_temporaries
from vla_rl.runs.run import (
    RunConfig,
    check_run_directory,
    claim_run_directory,
    lock_owner,
    release_run_directory,
    training_bar,
)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_an_output_directory_never_replaces_an_existing_file(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with pytest.raises(FileExistsError, match="is an existing file"):
        with atomic_directory(target) as tmp:
            (tmp / "x").write_text("new")
    assert target.read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # no temporary left either


def test_output_locations_under_a_file_or_read_only_are_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(FileExistsError, match="is a file"):
        check_output_location(tmp_path / "f" / "run", directory=True)
    with pytest.raises(FileExistsError, match="existing directory"):
        check_output_location(tmp_path, directory=False)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: nothing to check then
            pytest.skip("running as root: a read-only directory is still writable")
        with pytest.raises(PermissionError, match="not writable"):
            check_output_location(locked / "run", directory=True)
    finally:
        locked.chmod(0o700)


def test_stale_temporaries_go_and_the_only_complete_copy_stays(tmp_path):
    run = tmp_path / "run"
    (run / ".checkpoint.abc123.tmp").mkdir(parents=True)  # a kill inside atomic_directory
    (run / ".policy.x.tmp").mkdir()
    (run / ".checkpoint.old").mkdir()  # a kill between the two renames: the only copy
    (run / "metrics.jsonl").write_text("{}\n")
    (run / ".learning_curve.jxj8uc_j.png").write_text("half a plot")  # a kill in atomic_file
    (run / ".lock").write_text("1\n")
    removed = remove_stale_temporaries(run)
    assert sorted(p.name for p in removed) == [
        ".checkpoint.abc123.tmp",
        ".learning_curve.jxj8uc_j.png",
        ".policy.x.tmp",
    ]
    assert (run / ".lock").is_file()
    assert (run / ".checkpoint.old").is_dir() and (run / "metrics.jsonl").is_file()
    (run / "checkpoint").mkdir()  # once a newer checkpoint exists, the old copy is stale
    assert [p.name for p in remove_stale_temporaries(run)] == [".checkpoint.old"]


def test_a_run_directory_needs_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    check_run_directory(run, resume=False, overwrite=False)  # a new directory: fine
    (run / ".checkpoint.x.tmp").mkdir(parents=True)
    check_run_directory(run, resume=False, overwrite=False)  # only leftovers: fine
    (run / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--resume to continue it or --overwrite"):
        check_run_directory(run, resume=False, overwrite=False)
    check_run_directory(run, resume=True, overwrite=False)
    check_run_directory(run, resume=False, overwrite=True)
    with pytest.raises(ValueError, match="give one"):
        check_run_directory(run, resume=True, overwrite=True)
    claim_run_directory(run, overwrite=False)
    assert sorted(p.name for p in run.iterdir()) == [".lock", "results.json"]
    claim_run_directory(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [".lock"]
    release_run_directory(run)
    assert not (run / ".lock").exists()


def test_two_runs_never_write_one_directory(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        run.mkdir()
        (run / ".lock").write_text(f"{other.pid}\n")  # a live process writes this run
        with pytest.raises(FileExistsError, match=f"being written by process {other.pid}"):
            claim_run_directory(run, overwrite=True)
        assert (run / ".lock").read_text() == f"{other.pid}\n"  # refused: nothing touched
    finally:
        other.kill()
        other.wait()
    claim_run_directory(run, overwrite=False)  # its process is gone: the lock is taken over
    assert lock_owner(run) == os.getpid()
    release_run_directory(run)


@pytest.mark.parametrize("command", ["finetune", "pretrain"])
def test_the_cli_refuses_a_run_directory_that_holds_a_run(tmp_path, capsys, command):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text('{"success_rate": 0.5}')
    if command == "finetune":
        args = ["finetune", "--tasks", "reach-v3"]
    else:  # a real (tiny) dataset, so that the check reached is the run directory's
        from test_lerobot_dataset import make_episode

        from vla_rl.data.lerobot_dataset import write_dataset

        write_dataset(tmp_path / "ds", [make_episode(5, "reach", 1)], fps=10, robot_type="toy")
        args = ["pretrain", "--dataset", str(tmp_path / "ds"), "--eval-tasks", "reach-v3"]
    code = main([*args, "--output-dir", str(run)])
    assert code == 2 and "holds a run" in one_error_line(capsys)
    assert sorted(p.name for p in run.iterdir()) == ["results.json"]
    assert (run / "results.json").read_text() == '{"success_rate": 0.5}'


def test_the_cli_refuses_an_existing_file_as_run_directory(tmp_path, capsys):
    target = tmp_path / "results-of-last-week.json"
    target.write_text("precious")
    code = main(["finetune", "--tasks", "reach-v3", "--output-dir", str(target)])
    assert code == 2 and "is an existing file" in one_error_line(capsys)
    assert target.read_text() == "precious"


@pytest.mark.parametrize(
    "args",
    [
        ["collect", "--tasks", "reach-v3", "--episodes", "1", "--output"],
        ["eval", "--policy", "zero", "--tasks", "reach-v3", "--episodes", "1", "--output-dir"],
        ["fit-verifier", "--policy", "metaworld-flow", "--dataset", ".", "--output-dir"],
    ],
)
def test_commands_with_an_output_refuse_an_existing_file_before_any_work(tmp_path, capsys, args):
    target = tmp_path / "precious.txt"
    target.write_text("mine")
    code = main([*args, str(target)])
    assert code == 2 and "is an existing file" in one_error_line(capsys)
    assert target.read_text() == "mine" and sorted(tmp_path.iterdir()) == [target]


def test_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    import vla_rl.commands.benchmarks as command

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results.json"))

    monkeypatch.setattr(command, "main", full)
    assert main(["benchmarks"]) == 2
    assert "No space left on device" in one_error_line(capsys)


def test_the_bar_names_the_run_s_own_checkpoint_directory(tmp_path, capsys):
    """With no --output-dir the run directory is time-stamped once; the bar's line names that
    one (a second `run_directory` call named another second's directory, which never exists)."""
    run = tmp_path / "runs" / "finetune" / "residual" / "20261203-115906"
    bar = training_bar(RunConfig(), run, {"env_steps": 0}, "residual", 0.1, "every 1 RL step")
    bar.close()
    assert (
        f"checkpoint every 1 RL step to {run / 'checkpoint'} (--resume)" in capsys.readouterr().err
    )
