"""The env-slot protocol: the engine and the eval protocol run a batched in-process SlotEnv
unchanged, with the same results as the process-pool env; backends come from a registry."""

import numpy as np
import pytest
from toy_benchmark import ToyBatchedBenchmark, ToyBatchedEnv, ToyBenchmark
from toy_policies import GreedyToyPolicy

from vla_rl.core.benchmark import EnvConfig, first_episodes
from vla_rl.core.registry import BACKENDS, UnknownNameError
from vla_rl.core.slots import SlotEnv
from vla_rl.evaluation.protocol import evaluate
from vla_rl.rollout.engine import RolloutEngine
from vla_rl.rollout.frames import kept_frames, uniform_indices
from vla_rl.rollout.local import make_local_env


def rollout(bench, policy, episodes, horizon_cfg=None, **kwargs):
    cfg = horizon_cfg or EnvConfig(num_envs=3, num_workers=0)
    venv = bench.make_env([], cfg)
    try:
        return RolloutEngine(venv, pipeline_groups=2).run(policy, episodes, **kwargs), venv
    finally:
        venv.close()


def summary(records):
    return [
        (r.success, r.terminated, r.truncated, r.env_steps, r.rewards, r.chunk_steps,
         [o["state"].tolist() for o in r.observations])
        for r in records
    ]  # fmt: skip


def test_both_implementations_satisfy_the_protocol():
    local = ToyBenchmark().make_env([], EnvConfig(num_envs=2, num_workers=0))
    try:
        assert isinstance(local, SlotEnv)
        assert isinstance(ToyBatchedEnv(2, EnvConfig()), SlotEnv)
    finally:
        local.close()


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_batched_env_gives_the_process_pool_results(chunk_size):
    # Noisy policy, 8 episodes on 3 slots (refills), short horizon: successes and truncations.
    policy = GreedyToyPolicy(chunk_size=chunk_size, noise=1.5)
    episodes = first_episodes(ToyBenchmark(horizon=12).tasks("eval"), 4)
    pool, _ = rollout(ToyBenchmark(horizon=12), policy, episodes, seed=3, keep_steps=True)
    batched, venv = rollout(ToyBatchedBenchmark(horizon=12), policy, episodes, seed=3,
                            keep_steps=True)  # fmt: skip
    assert summary(batched) == summary(pool)
    outcomes = {(r.terminated, r.truncated) for r in pool}
    assert (True, False) in outcomes and (False, True) in outcomes  # both ends were exercised
    # One batched call per env step of all running slots of a group, not one per slot.
    slot_steps = sum(r.env_steps for r in batched)
    assert venv.batch_calls < slot_steps


def test_batched_env_chunk_stops_at_the_end_and_has_no_autoreset():
    bench = ToyBatchedBenchmark(horizon=4)
    env = bench.make_env([], EnvConfig(num_envs=2))
    task = bench.tasks("eval", ["left"])[0]
    env.reset_slots([0, 1], [first_episodes([task], 2)[0], first_episodes([task], 2)[1]])
    away = np.full((2, 6, 1), 1.0, dtype=np.float32)  # right, away from the left target
    steps = env.step_wait(env.step_async([0, 1], away))
    assert [s.steps for s in steps] == [4, 4] and all(s.truncated for s in steps)
    assert all(len(s.rewards) == 4 for s in steps)
    with pytest.raises(RuntimeError, match="reset them first"):
        env.step_async([0], away[:1])


def test_batched_env_records_frames_like_the_chunked_env():
    policy = GreedyToyPolicy(chunk_size=2)
    episodes = first_episodes(ToyBenchmark().tasks("eval"), 2)
    for frames_per in ("step", "chunk"):
        kwargs = dict(seed=0, record_video=lambda i, s: i % 2 == 0, frames_per=frames_per)
        pool, _ = rollout(ToyBenchmark(), policy, episodes, **kwargs)
        batched, _ = rollout(ToyBatchedBenchmark(), policy, episodes, **kwargs)
        for a, b in zip(pool, batched):
            assert (a.frames is None) == (b.frames is None)
            if a.frames is not None:
                assert len(a.frames) == len(b.frames)
                assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames))


@pytest.mark.parametrize("num", [1, 3, 50])
def test_sampled_frames_are_the_sampled_ones_of_every_chunk_frame(num):
    """frames_per=F keeps, of the per-chunk frames, the `kept_frames` (all when the episode is
    shorter), on both implementations; the encoder's sampling then reads the same frames."""
    policy = GreedyToyPolicy(chunk_size=2, noise=1.0)
    episodes = first_episodes(ToyBenchmark(horizon=12).tasks("eval"), 2)
    kwargs = dict(seed=0, record_video=lambda i, s: True)
    for bench in (ToyBenchmark(horizon=12), ToyBatchedBenchmark(horizon=12)):
        every, _ = rollout(bench, policy, episodes, frames_per="chunk", **kwargs)
        sampled, _ = rollout(bench, policy, episodes, frames_per=num, **kwargs)
        for a, b in zip(every, sampled):
            assert a.rewards == b.rewards  # the same episode
            keep = kept_frames(len(a.frames), num)
            assert len(b.frames) == min(num, len(a.frames)) == len(keep)
            assert all(np.array_equal(a.frames[i], f) for i, f in zip(keep, b.frames))
            full = np.stack(a.frames)[uniform_indices(len(a.frames), num)]
            np.testing.assert_array_equal(np.stack(b.frames)[uniform_indices(len(b.frames), num)],
                                          full)  # fmt: skip


def test_frames_per_must_be_a_mode_or_a_positive_count():
    episodes = first_episodes(ToyBenchmark().tasks("eval"), 1)
    for bad in (0, -2, "every", True):
        with pytest.raises(ValueError, match="frames_per must be"):
            rollout(ToyBenchmark(), GreedyToyPolicy(), episodes, frames_per=bad,
                    record_video=lambda i, s: True)  # fmt: skip


def test_kept_frames_by_hand():
    assert kept_frames(10, 4).tolist() == [0, 3, 6, 9]
    assert kept_frames(3, 5).tolist() == [0, 1, 2]  # shorter than the clip: every frame
    assert kept_frames(4, 4).tolist() == [0, 1, 2, 3]
    for n in range(1, 80):  # kept twice is kept once: the engine may select what the env kept
        k = kept_frames(n, 16)
        assert kept_frames(len(k), 16).tolist() == list(range(len(k)))


def test_eval_protocol_runs_a_batched_benchmark_unchanged(tmp_path):
    kwargs = dict(task_names=["left", "right"], episodes_per_task=5, seed=0, progress=False,
                  env_cfg=EnvConfig(num_envs=4, num_workers=0, video_size=0))  # fmt: skip
    pool = evaluate(GreedyToyPolicy(noise=0.8), ToyBenchmark(), **kwargs)
    batched = evaluate(GreedyToyPolicy(noise=0.8), ToyBatchedBenchmark(), **kwargs)
    assert batched["per_task"] == pool["per_task"]


def test_backend_is_chosen_by_name_and_a_new_one_is_one_registry_entry(monkeypatch):
    made = []

    def counting_backend(env_fn, cfg):  # a stand-in for a Ray backend: wraps the local one
        made.append(cfg.num_envs)
        return make_local_env(env_fn, cfg)

    monkeypatch.setitem(BACKENDS._entries, "counting", counting_backend)
    bench = ToyBenchmark()
    cfg = EnvConfig(num_envs=2, num_workers=0, backend="counting")
    records, _ = rollout(bench, GreedyToyPolicy(), first_episodes(bench.tasks("eval"), 1),
                         horizon_cfg=cfg)  # fmt: skip
    assert made == [2] and all(r.success for r in records)
    with pytest.raises(UnknownNameError, match="valid choices: local"):
        bench.make_env([], EnvConfig(backend="nope"))
