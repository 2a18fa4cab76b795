"""Contract tests run over every registered benchmark (LIBERO ones skip without the extra)."""

import importlib.util

import numpy as np
import pytest

from vla_rl.core.benchmark import EnvConfig, check_disjoint, get_benchmark
from vla_rl.core.registry import BENCHMARKS, LIBERO_PRO_SUITES
from vla_rl.rollout.chunked_env import ChunkedEnv

HAS_LIBERO = importlib.util.find_spec("libero") is not None


def one_pro_suite_per_kind() -> set[str]:
    """The LIBERO-PRO suites share the standard suites' env (LiberoTaskEnv) and differ only in
    their BDDL files, so the contract runs on the first one of each perturbation kind (5 envs,
    not 23); tests/test_libero_pro.py checks every one's task list and one env per kind."""
    first: dict[str, str] = {}
    for name, (kind, _) in LIBERO_PRO_SUITES.items():
        first.setdefault(kind, name)
    return set(first.values())


def benchmark_params():
    covered_pro = one_pro_suite_per_kind()
    for name in BENCHMARKS.names():
        if name in LIBERO_PRO_SUITES and name not in covered_pro:
            continue
        if name == "worldmodel":  # needs a trained model: its contract runs in test_world_model
            continue
        marks = []
        if name.startswith("libero"):
            marks = [
                pytest.mark.libero,
                pytest.mark.skipif(
                    not HAS_LIBERO, reason="LIBERO not installed: pip install -e '.[libero]'"
                ),
            ]
        yield pytest.param(name, marks=marks, id=name)


@pytest.fixture(scope="module", params=list(benchmark_params()))
def bench_env(request):
    bench = get_benchmark(request.param)
    env = ChunkedEnv(bench.env_factory(EnvConfig(video_size=0))())
    yield bench, env
    env.close()


def noop(bench):
    return np.asarray(bench.noop_action, np.float32)


def test_splits_are_disjoint_and_described(bench_env):
    bench, _ = bench_env
    train, eval_ = bench.tasks("train"), bench.tasks("eval")
    assert [t.name for t in train] == [t.name for t in eval_] == bench.task_names()
    check_disjoint(train, eval_)
    for t in train + eval_:
        assert t.init_ids and isinstance(t.instruction, str) and t.instruction
        assert t.max_steps > 0 and t.benchmark == bench.name


def test_reset_and_step_shapes_dtypes_and_success_flag(bench_env):
    bench, env = bench_env
    task = bench.tasks("eval")[0]
    obs, info = env.reset(options={"task": task, "init_id": task.init_ids[0]})
    assert obs["state"].shape == (bench.state_dim,) and obs["state"].dtype == np.float32
    assert "image" not in obs and isinstance(info["success"], bool) and not info["success"]
    assert env.action_space.shape == (bench.action_dim,)
    obs, reward, terminated, truncated, info = env.step(np.stack([noop(bench)] * 3))
    assert obs["state"].shape == (bench.state_dim,) and np.isfinite(obs["state"]).all()
    assert isinstance(reward, float) and isinstance(terminated, bool)
    assert isinstance(truncated, bool) and isinstance(info["success"], bool)
    assert info["steps"] == 3 and info["rewards"].dtype == np.float32


def test_reset_is_deterministic_given_the_init_id(bench_env):
    bench, env = bench_env
    task = bench.tasks("eval")[0]
    first, _ = env.reset(options={"task": task, "init_id": task.init_ids[0]})
    env.step(np.stack([noop(bench)] * 2))
    env.reset(options={"task": task, "init_id": task.init_ids[1]})
    again, _ = env.reset(options={"task": task, "init_id": task.init_ids[0]})
    np.testing.assert_allclose(first["state"], again["state"], atol=1e-6)


def test_images_on_request():
    bench = get_benchmark("metaworld")
    env = bench.env_factory(EnvConfig(images=True, image_size=64))()
    task = bench.tasks("eval", ["reach-v3"])[0]
    obs, _ = env.reset(options={"task": task, "init_id": task.init_ids[0]})
    assert obs["image"].shape == (1, 64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["image"].std() > 0  # a real picture, not a blank buffer
    env.close()


def test_metaworld_train_and_eval_states_differ():
    """Disjoint ids are not enough: the sampled object/goal positions must differ too."""
    bench = get_benchmark("metaworld")
    env = bench.env_factory(EnvConfig(video_size=0))()
    vectors = {}
    for split in ("train", "eval"):
        task = bench.tasks(split, ["pick-place-v3"])[0]
        for i in task.init_ids[:25]:
            env.reset(options={"task": task, "init_id": i})
            vectors[(split, i)] = env.sampled_init_vector()
    env.close()
    train = np.stack([v for (s, _), v in vectors.items() if s == "train"])
    eval_ = np.stack([v for (s, _), v in vectors.items() if s == "eval"])
    distances = np.linalg.norm(train[:, None] - eval_[None], axis=-1)
    assert distances.min() > 1e-6
    assert len({tuple(v.round(6)) for v in vectors.values()}) == 50


def test_metaworld_chunk_stops_at_success_with_the_scripted_expert():
    from vla_rl.policies.scripted_metaworld import ScriptedMetaWorldPolicy

    bench = get_benchmark("metaworld")
    env = ChunkedEnv(bench.env_factory(EnvConfig(video_size=0))())
    task = bench.tasks("eval", ["reach-v3"])[0]
    expert = ScriptedMetaWorldPolicy()
    obs, _ = env.reset(options={"task": task, "init_id": task.init_ids[0]})
    for _ in range(50):
        batch = {"state": obs["state"][None], "task": [task.name], "instruction": [""]}
        action = expert.sample_actions(batch).actions[0, 0].numpy()
        # Repeat the expert's action 20 times: the chunk must stop when success arrives.
        obs, _, terminated, truncated, info = env.step(np.stack([action] * 20))
        if terminated or truncated:
            break
    assert terminated and info["success"] and not truncated
    with pytest.raises(RuntimeError):  # the succeeded episode does not step any further
        env.step(np.stack([action] * 20))
    env.close()


def test_task_sets_and_unknown_names():
    from vla_rl.core.registry import UnknownNameError

    bench = get_benchmark("metaworld")
    assert len(bench.resolve_task_names(["MT10"])) == 10
    assert len(bench.resolve_task_names(["MT50"])) == 50
    assert bench.resolve_task_names(["reach-v3", "MT10"])[0] == "reach-v3"
    with pytest.raises(UnknownNameError, match="MT10, MT50"):
        bench.resolve_task_names(["MT11"])
    with pytest.raises(UnknownNameError, match="train, eval"):
        bench.tasks("test")
