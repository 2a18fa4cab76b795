"""Faults: worker processes never outlive their run, and a run killed between RL steps resumes
to exactly the result of an uninterrupted one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent

# A run whose two workers are inside a 30 s env step when the run is killed: without a death
# signal they would live on until the step ends (and a truly hung one forever).
PARENT = """
import sys, time
import numpy as np
sys.path.insert(0, {tests!r})
from toy_benchmark import SleepyToyBenchmark
from vla_rl.core.benchmark import EnvConfig, first_episodes
bench = SleepyToyBenchmark()
venv = bench.make_env([], EnvConfig(num_envs=2, num_workers=2))
venv.reset_slots([0, 1], first_episodes(bench.tasks("eval"), 1))
venv.step_async([0, 1], np.zeros((2, 1, 1), dtype=np.float32))
print(" ".join(str(p.pid) for p in venv._procs), flush=True)
time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_run():
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(tests=str(TESTS))],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(alive(p) for p in workers)
        os.kill(parent.pid, signal.SIGKILL)  # no close message, no cleanup: kill -9
        parent.wait()
        deadline = time.monotonic() + 10  # well inside the workers' 30 s step
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in workers), "a worker outlived its run"
    finally:
        parent.kill()


GRPO = ["finetune", "--method", "grpo", "--tasks", "button-press-topdown-v3",
        "--eval-every", "100000", "--eval-episodes", "1", "--final-eval-episodes", "2",
        "--videos", "0", "--logger", "none", "--no-progress", "--env.num-envs", "2",
        "--env.num-workers", "0", "--env.max-steps", "82", "--grpo.episodes-per-step", "8",
        "--grpo.group-size", "4", "--grpo.rollout-envs", "4", "--grpo.rollout-workers", "0",
        "--grpo.lr", "1e-3", "--grpo.minibatch-size", "16"]  # fmt: skip
BUDGET = ["--env-steps", "1500"]  # 3 RL steps of 8 episodes (<= 82 env steps each)


def weights(run: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(run / "policy" / "model.safetensors"))


PPO = [a.replace("grpo", "ppo") for a in GRPO]
del PPO[PPO.index("--ppo.group-size") : PPO.index("--ppo.group-size") + 2]  # ppo has no groups
PPO += ["--ppo.critic-warmup-steps", "1"]  # so that the policy moves in the 3 RL steps


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_on_policy_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path, method):
    """Every run in a process of its own: this one's torch is single-threaded (conftest),
    which rounds the updates differently from the 2 threads of a plain `vla-rl`."""
    import json

    args = {"grpo": GRPO, "ppo": PPO}[method]
    cmd = [sys.executable, "-m", "vla_rl.cli", *args, *BUDGET, "--output-dir"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run([*cmd, str(straight)], check=True, capture_output=True)
    # SIGKILLed once its first checkpoint is written (mid-way through the next RL step's
    # rollout or update), then resumed.
    proc = subprocess.Popen([*cmd, str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    state = killed / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while not state.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads(state.read_text())["rl_steps"] < 3  # killed before the run could end
    subprocess.run([*cmd, str(killed), "--resume"], check=True, capture_output=True)
    a, b = weights(straight), weights(killed)
    assert set(a) == set(b) and all((a[k] == b[k]).all() for k in a)
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (straight, killed))
    assert (ra["rl_steps"], ra["env_steps"], ra["per_task"]) == (
        rb["rl_steps"], rb["env_steps"], rb["per_task"])  # fmt: skip
    assert not list(killed.glob(".*.tmp"))  # what the kill left behind was cleaned


def test_resume_with_other_training_settings_is_one_line(tmp_path, capsys):
    from vla_rl.cli import main

    run = tmp_path / "run"
    assert main([*GRPO, "--env-steps", "300", "--output-dir", str(run)]) == 0
    capsys.readouterr()
    code = main([*GRPO, "--env-steps", "600", "--grpo.lr", "1e-4", "--output-dir", str(run),
                 "--resume"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--grpo.lr 0.001 -> 0.0001" in err[0] and "other settings" in err[0]
    # a longer budget, other eval settings and worker counts are fine
    assert main([*GRPO, "--env-steps", "600", "--eval-episodes", "2", "--output-dir", str(run),
                 "--resume"]) == 0  # fmt: skip


def test_resume_compares_only_the_settings_the_checkpoint_names(tmp_path):
    """A setting added to the toolkit after a checkpoint was written (absent from its stored
    identity) does not block its resume; a stored one that changed does."""
    from vla_rl.core.config import ConfigError
    from vla_rl.runs.run import check_same_training

    saved = {"grpo.lr": 1e-3, "seed": 0}
    check_same_training(saved, {"grpo.lr": 1e-3, "seed": 0, "grpo.shaping.mode": "potential"},
                        tmp_path)  # fmt: skip
    with pytest.raises(ConfigError, match="--seed 0 -> None"):
        check_same_training(saved, {"grpo.lr": 1e-3}, tmp_path)


def summarize(records):
    return [(r.spec.task.name, r.spec.init_id, r.success, r.env_steps, r.rewards) for r in records]


def rollout(bench, cfg, policy, episodes):
    from vla_rl.rollout.engine import RolloutEngine

    venv = bench.make_env([], cfg)
    try:
        engine = RolloutEngine(venv, cfg.pipeline_groups)
        return engine.run(policy, episodes, seed=0), engine.last_stats, venv.restarts
    finally:
        venv.close()


@pytest.mark.parametrize("mode", ["die", "hang"])
def test_a_lost_worker_is_replaced_and_its_episodes_run_again(tmp_path, mode):
    from toy_benchmark import FaultyToyBenchmark, ToyBenchmark
    from toy_policies import GreedyToyPolicy

    from vla_rl.core.benchmark import EnvConfig, first_episodes

    cfg = EnvConfig(num_envs=4, num_workers=2, step_timeout_s=3.0)
    episodes = first_episodes(ToyBenchmark().tasks("eval"), 4)  # 8 episodes on 4 slots
    policy = GreedyToyPolicy(chunk_size=2)
    calm, calm_stats, _ = rollout(ToyBenchmark(), cfg, policy, episodes)
    faulty = FaultyToyBenchmark(1001, str(tmp_path / "failed-once"), mode)
    records, stats, restarts = rollout(faulty, cfg, policy, episodes)
    assert (tmp_path / "failed-once").exists()  # the fault happened
    assert summarize(records) == summarize(calm)  # and changed nothing in the results
    assert sum(restarts) == 1 and calm_stats.episodes_rerun == 0
    assert stats.episodes_rerun >= 1  # the episode that failed, and its worker-mates in flight


def test_a_worker_that_keeps_failing_ends_the_run_with_one_line(tmp_path, capsys):
    from toy_benchmark import FaultyToyBenchmark
    from toy_policies import GreedyToyPolicy

    from vla_rl.core.benchmark import EnvConfig, first_episodes
    from vla_rl.core.slots import WorkerError

    bench = FaultyToyBenchmark(1001, str(tmp_path / "m"), "die", always=True)
    with pytest.raises(WorkerError, match="giving up"):
        rollout(bench, EnvConfig(num_envs=2, num_workers=1), GreedyToyPolicy(),
                first_episodes(bench.tasks("eval"), 2))  # fmt: skip


def test_a_reply_received_before_its_worker_was_lost_is_void_not_awaited(tmp_path):
    """Two requests in flight on one worker, collected in the other order (the engine's
    pipelining): waiting on the second (its step hangs) stashes the first's reply, then the
    worker is lost. The first must then report lost at once: its reply described an env that
    is gone, and the fresh worker will never send it (before a137fcc: a wait for ever without a
    step timeout, a second timeout and restart with one)."""
    from toy_benchmark import FaultyToyBenchmark

    from vla_rl.core.benchmark import EnvConfig
    from vla_rl.core.types import EpisodeSpec

    bench = FaultyToyBenchmark(1001, str(tmp_path / "hung-once"), "hang")
    task = bench.tasks("eval")[0]
    venv = bench.make_env([], EnvConfig(num_envs=2, num_workers=1, step_timeout_s=2.0))
    try:
        venv.reset_slots([0, 1], [EpisodeSpec(task, 1000), EpisodeSpec(task, 1001)])
        action = np.zeros((1, 1, *venv.single_action_space.shape), dtype=np.float32)
        first = venv.step_async([0], action)
        second = venv.step_async([1], action)  # hangs in the worker
        assert venv.step_wait(second)[0].lost  # after the 2 s timeout; first's reply stashed
        start = time.monotonic()
        assert venv.step_wait(first)[0].lost
        assert time.monotonic() - start < 1.0 and venv.restarts == [1]
        venv.reset_slots([0, 1], [EpisodeSpec(task, 1000), EpisodeSpec(task, 1001)])
        assert not any(
            r.lost for r in venv.step_wait(venv.step_async([0, 1], np.repeat(action, 2, 0)))
        )
    finally:
        venv.close()


def test_a_refill_that_finds_its_worker_lost_keeps_the_other_slots_observable(tmp_path):
    """The engine's order: one group's step in flight (slot 1's env dies in it), then a refill
    of the other group (slot 0) on the same worker, then that group is observed and stepped.
    Slot 2, on the lost worker but in neither request, still has its last observation; its
    step reports it lost (before: observe raised "slot 2 has not been reset" and the run
    stopped)."""
    from toy_benchmark import FaultyToyBenchmark

    from vla_rl.core.benchmark import EnvConfig
    from vla_rl.core.types import EpisodeSpec

    bench = FaultyToyBenchmark(1001, str(tmp_path / "died-once"), "die")
    task = bench.tasks("eval")[0]
    venv = bench.make_env([], EnvConfig(num_envs=4, num_workers=1, step_timeout_s=10.0))
    try:
        venv.reset_slots(range(4), [EpisodeSpec(task, i) for i in (1000, 1001, 1002, 1003)])
        action = np.zeros((2, 1, *venv.single_action_space.shape), dtype=np.float32)
        in_flight = venv.step_async([1, 3], action)
        venv.reset_slots([0], [EpisodeSpec(task, 1004)])  # finds it lost, restarts, resets
        assert (tmp_path / "died-once").exists() and venv.restarts == [1]
        assert venv.observe([0, 2])["state"].shape == (2, 2)
        assert [r.lost for r in venv.step_wait(venv.step_async([0, 2], action))] == [False, True]
        assert [r.lost for r in venv.step_wait(in_flight)] == [True, True]
        venv.reset_slots([1, 2, 3], [EpisodeSpec(task, i) for i in (1001, 1002, 1003)])
        steps = venv.step_wait(venv.step_async([0, 1, 2, 3], np.repeat(action, 2, 0)))
        assert not any(r.lost for r in steps)  # every slot runs again after its reset
    finally:
        venv.close()


RESIDUAL = ["finetune", "--method", "residual", "--tasks", "button-press-topdown-v3",
            "--env-steps", "600", "--eval-every", "100000", "--eval-episodes", "1",
            "--final-eval-episodes", "1", "--videos", "0", "--logger", "none", "--no-progress",
            "--env.num-envs", "2", "--env.num-workers", "0", "--env.max-steps", "82",
            "--residual.learning-starts", "60", "--residual.critic-warmup-updates", "5",
            "--residual.batch-size", "32", "--residual.hidden", "32",
            "--residual.num-critics", "2", "--residual.save-every", "100",
            "--residual.demos", "none"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("reward", ["success", "critic"])
def test_residual_killed_mid_episode_resumes_to_the_uninterrupted_result(tmp_path, reward):
    """The checkpoint every 100 env steps lands inside episodes (82-step horizon, 2 slots): a
    resumed run replays the episodes in progress and ends with the weights of the run left
    alone, not merely a run that goes on. Every run in a process of its own: this one's torch is
    single-threaded (conftest), which rounds the updates differently. With a progress critic's
    shaping, the frames it scores of the episodes in progress are rendered again by the replay
    (the checkpoint does not hold them)."""
    import json

    from vla_rl.core.benchmark import get_benchmark
    from vla_rl.rewards.pairwise_critic import PairwiseProgressCritic

    flags = []
    if reward == "critic":
        task = get_benchmark("metaworld").tasks("train", ["button-press-topdown-v3"])[0]
        PairwiseProgressCritic([task.instruction], image_size=16).save(tmp_path / "critic")
        flags = ["--residual.reward", "critic", "--residual.critic", str(tmp_path / "critic")]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    cmd = [sys.executable, "-m", "vla_rl.cli", *RESIDUAL, *flags, "--output-dir"]
    subprocess.run([*cmd, str(straight)], check=True, capture_output=True)
    proc = subprocess.Popen([*cmd, str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    state = killed / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while not (state.is_file() and json.loads(state.read_text())["env_steps"] >= 200):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads(state.read_text())
    assert saved["env_steps"] < 600 and any(s for s in saved["inflight"])
    resumed = subprocess.run([*cmd, str(killed), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0 and "did not replay" not in resumed.stderr
    a, b = weights(straight), weights(killed)
    assert set(a) == set(b) and all((a[k] == b[k]).all() for k in a)
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (straight, killed))
    assert (ra["updates"], ra["train_episodes"], ra["per_task"]) == (
        rb["updates"], rb["train_episodes"], rb["per_task"])  # fmt: skip
