"""The rollout engine and Trajectories on the toy benchmark (fast) with real worker processes."""

import numpy as np
import pytest
import torch
from toy_benchmark import ToyBenchmark
from toy_policies import GreedyToyPolicy

from vla_rl.core.benchmark import EnvConfig, EpisodeSpec, first_episodes, group_episodes
from vla_rl.core.trajectories import Trajectories
from vla_rl.rollout.engine import RolloutEngine


def run(policy, episodes, num_envs=3, num_workers=0, main_envs=0, **kwargs):
    bench = ToyBenchmark()
    cfg = EnvConfig(num_envs=num_envs, num_workers=num_workers, main_envs=main_envs)
    venv = bench.make_env([], cfg)
    try:
        return RolloutEngine(venv).run(policy, episodes, **kwargs)
    finally:
        venv.close()


@pytest.fixture
def episodes():
    return first_episodes(ToyBenchmark().tasks("eval"), 4)  # 8 episodes > 3 slots: refills


def test_all_episodes_run_once_in_order(episodes):
    records = run(GreedyToyPolicy(chunk_size=2), episodes)
    assert [r.spec for r in records] == episodes
    assert all(r.success and r.terminated and not r.truncated for r in records)
    assert all(r.env_steps <= 2 * r.decision_steps for r in records)


def test_deterministic_under_seed_and_independent_of_workers(episodes):
    policy = GreedyToyPolicy(noise=0.5)
    a = run(policy, episodes, seed=1, keep_steps=True)
    b = run(policy, episodes, seed=1, keep_steps=True, num_workers=2)
    mixed = run(policy, episodes, seed=1, keep_steps=True, num_workers=1, main_envs=1)
    c = run(policy, episodes, seed=2, keep_steps=True)
    steps = lambda rs: [[float(s.actions.sum()) for s in r.samples] for r in rs]  # noqa: E731
    assert steps(a) == steps(b) == steps(mixed)
    assert steps(a) != steps(c)


def test_timeouts_are_truncations_not_terminations():
    bench = ToyBenchmark(horizon=3)
    task = bench.tasks("eval", ["left"])[0]
    venv = bench.make_env([task], EnvConfig(num_envs=2, num_workers=0))

    class Still(GreedyToyPolicy):
        def sample_actions(self, obs, deterministic=False):
            sample = super().sample_actions(obs)
            sample.actions.zero_()
            return sample

    records = RolloutEngine(venv).run(Still(), [EpisodeSpec(task, 1000)])
    venv.close()
    (r,) = records
    assert r.truncated and not r.terminated and not r.success and r.env_steps == 3


def test_groups_share_initial_states():
    tasks = ToyBenchmark().tasks("train")
    eps = group_episodes(tasks, states_per_task=2, group_size=3, rng=np.random.default_rng(0))
    assert len(eps) == 12 and len({e.group for e in eps}) == 4
    for g in range(4):
        members = [e for e in eps if e.group == g]
        assert len(members) == 3 and len({(e.task.name, e.init_id) for e in members}) == 1
    records = run(GreedyToyPolicy(), eps, keep_steps=True)
    first = {}
    for r in records:  # same group -> same first observation
        state = r.observations[0]["state"]
        first.setdefault(r.spec.group, state)
        np.testing.assert_array_equal(first[r.spec.group], state)


def test_trajectories_are_time_major_with_valid_mask(episodes):
    records = run(GreedyToyPolicy(chunk_size=2), episodes, keep_steps=True)
    traj = Trajectories.from_episodes(records)
    t, b = traj.num_steps, traj.batch_size
    assert b == len(episodes) and t == max(r.decision_steps for r in records)
    assert traj.obs["state"].shape == (t, b, 2)
    assert traj.actions.shape == (t, b, 2, 1)
    assert traj.log_probs.shape == (t, b) and traj.extras["direction"].shape == (t, b)
    assert torch.equal(traj.lengths, torch.tensor([r.decision_steps for r in records]))
    # exactly one terminal flag per successful episode, at its last valid step
    assert torch.equal(traj.terminated.sum(0), torch.ones(b, dtype=torch.long))
    last = traj.lengths - 1
    assert traj.terminated[last, torch.arange(b)].all()
    assert not traj.valid[~traj.valid].any() and traj.valid.sum() == traj.lengths.sum()
    assert traj.obs["instruction"][0].startswith("move to the")
    assert traj.final_obs["state"].shape == (b, 2)


def test_video_frames_only_for_requested_episodes(episodes):
    records = run(GreedyToyPolicy(), episodes, record_video=lambda i, spec: i == 1)
    assert records[0].frames is None
    assert len(records[1].frames) == records[1].env_steps + 1  # reset frame + one per step


def test_standard_vector_env_api_steps_every_slot():
    bench = ToyBenchmark()
    tasks = bench.tasks("eval")
    venv = bench.make_env(tasks, EnvConfig(num_envs=2, num_workers=1))
    try:
        with pytest.raises(ValueError, match="episodes"):
            venv.reset()
        obs, _ = venv.reset(options={"episodes": [EpisodeSpec(t, 1000) for t in tasks]})
        assert obs["state"].shape == (2, 2) and obs["task"] == ["left", "right"]
        actions = np.zeros((2, 3, 1), dtype=np.float32)
        obs, rewards, terminated, truncated, infos = venv.step(actions)
        assert rewards.shape == (2,) and terminated.dtype == bool and truncated.shape == (2,)
        # zero actions: a slot runs the whole chunk unless it starts on its target (success)
        assert infos["steps"].tolist() == [1 if t else 3 for t in terminated]
        assert venv.single_action_space.shape == (1,) and venv.action_space.shape == (2, 1)
    finally:
        venv.close()


def test_benchmark_refuses_foreign_tasks():
    from vla_rl.core.benchmark import get_benchmark

    with pytest.raises(ValueError, match="cannot run on benchmark"):
        get_benchmark("metaworld").make_env(ToyBenchmark().tasks("eval"))


def test_a_dead_worker_is_replaced_and_a_reset_simply_happens_again():
    bench = ToyBenchmark()
    tasks = bench.tasks("eval")
    venv = bench.make_env(tasks, EnvConfig(num_envs=2, num_workers=1))
    try:
        venv._procs[0].kill()
        venv._procs[0].join()
        venv.reset_slots([0, 1], [EpisodeSpec(t, 1000) for t in tasks])
        assert venv.restarts == [1] and venv._procs[0].is_alive()
        assert venv.observe([0, 1])["task"] == [t.name for t in tasks]
    finally:
        venv.close()
