"""ChunkedEnv: chunk execution, sticky success, terminated vs truncated, no silent autoreset."""

import numpy as np
import pytest
from toy_benchmark import ToyBenchmark

from vla_rl.core.benchmark import EnvConfig
from vla_rl.rollout.chunked_env import ChunkedEnv


def make(horizon=30, max_steps=None):
    bench = ToyBenchmark(horizon)
    env = ChunkedEnv(bench.env_factory(EnvConfig(max_steps=max_steps))())
    task = bench.tasks("train", ["right"])[0]
    return env, task


def reset_at(env, task, pos):
    env.reset(options={"task": task, "init_id": 0})
    env.unwrapped.pos = pos


def test_chunk_stops_at_success_and_keeps_it():
    env, task = make()
    reset_at(env, task, 0.2)  # 3 steps of +0.1 reach 0.5
    obs, reward, terminated, truncated, info = env.step(np.ones((8, 1)))
    assert info["steps"] == 3 and info["success"] and terminated and not truncated
    assert info["rewards"].shape == (3,)
    assert reward == pytest.approx(info["rewards"].sum())
    assert obs["state"][0] == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.ones((1, 1)))  # no autoreset: a finished episode must be reset explicitly


def test_horizon_truncates_mid_chunk():
    env, task = make(horizon=5)
    reset_at(env, task, -1.0)
    _, _, terminated, truncated, info = env.step(-np.ones((4, 1)))
    assert info["steps"] == 4 and not truncated
    _, _, terminated, truncated, info = env.step(-np.ones((4, 1)))
    assert info["steps"] == 1 and truncated and not terminated and not info["success"]
    assert info["episode_steps"] == 5


def test_chunk_of_one_equals_unchunked_stepping():
    env_a, task = make()
    env_b, _ = make()
    reset_at(env_a, task, -0.3)
    reset_at(env_b, task, -0.3)
    actions = np.linspace(-1, 1, 6)[:, None]
    env_a.step(actions)
    for a in actions:
        env_b.step(a[None])
    assert env_a.unwrapped.pos == pytest.approx(env_b.unwrapped.pos)


def test_frames_recorded_per_env_step():
    env, task = make()
    env.record_frames = True
    _, info = env.reset(options={"task": task, "init_id": 3})
    assert len(info["frames"]) == 1
    _, _, _, _, info = env.step(np.zeros((4, 1)))
    assert len(info["frames"]) == 4 and info["frames"][0].dtype == np.uint8
