"""LIBERO-PRO suites (benchmarks/libero_pro.py): every registered suite's task list, and one env
per perturbation kind reset and stepped, with the perturbation seen in the sim. Needs the
[libero] extra (~3 s per env)."""

import importlib.util
from functools import cache

import numpy as np
import pytest

from vla_rl.core.registry import BENCHMARKS, LIBERO_PRO_SUITES

pytestmark = [
    pytest.mark.libero,
    pytest.mark.skipif(
        importlib.util.find_spec("libero") is None,
        reason="LIBERO not installed: pip install -e '.[libero]'",
    ),
]

PRO = list(LIBERO_PRO_SUITES)
# One suite per kind for the env tests, over all four base suites.
ONE_PER_KIND = {
    "position": "libero_goal_swap",
    "object": "libero_spatial_object",
    "language": "libero_object_lan",
    "task": "libero_goal_task",
    "distractor": "libero_10_with_mug",
}


@cache
def bench(name):
    from vla_rl.core.benchmark import get_benchmark

    return get_benchmark(name)


def instructions(b):
    return {t.name: t.instruction for t in b.tasks("eval")}


def test_the_registry_names_each_suite_with_its_kind_and_base():
    from vla_rl.benchmarks.libero import HORIZONS
    from vla_rl.benchmarks.libero_pro import KINDS

    assert set(ONE_PER_KIND) == set(KINDS) == {kind for kind, _ in LIBERO_PRO_SUITES.values()}
    for name, (kind, base) in LIBERO_PRO_SUITES.items():
        cls = BENCHMARKS.get(name)
        assert (cls.name, cls.kind, cls.base_suite) == (name, kind, base) and base in HORIZONS
        assert BENCHMARKS.description(name).startswith(f"LIBERO-PRO {kind}")
        assert BENCHMARKS.description(name).endswith(f"of {base} (needs the [libero] extra)")


@pytest.mark.parametrize("name", PRO)
def test_tasks_have_disjoint_splits_and_the_base_suite_horizon(name):
    from vla_rl.benchmarks.libero import HORIZONS
    from vla_rl.core.benchmark import check_disjoint

    pro = bench(name)
    base = bench(pro.base_suite)
    train, eval_ = pro.tasks("train"), pro.tasks("eval")
    check_disjoint(train, eval_)
    assert [t.name for t in train] == [t.name for t in eval_] == pro.task_names()
    assert len(pro.task_names()) == 10
    for t in train + eval_:
        assert t.benchmark == name and t.max_steps == HORIZONS[pro.base_suite]
        assert t.init_ids == (tuple(range(25)) if t.split == "eval" else tuple(range(25, 50)))
        assert isinstance(t.instruction, str) and t.instruction
    # Each task perturbs a different standard task; a scene-only perturbation keeps its words.
    base_tasks = [pro.base_task(n) for n in pro.task_names()]
    assert sorted(base_tasks) == sorted(base.task_names())
    if pro.kind not in ("language", "task"):
        base_words = instructions(base)
        assert all(instructions(pro)[n] == base_words[pro.base_task(n)] for n in pro.task_names())


@pytest.mark.parametrize(
    "name", [n for n, (kind, _) in LIBERO_PRO_SUITES.items() if kind in ("language", "task")]
)
def test_language_and_task_suites_change_every_instruction(name):
    pro = bench(name)
    base_words = instructions(bench(pro.base_suite))
    for task_name, words in instructions(pro).items():
        assert words != base_words[pro.base_task(task_name)], (name, task_name, words)


def object_positions(raw):
    """{object: xyz} from a LIBERO observation (the movable objects' body positions)."""
    return {k[:-4]: np.asarray(v) for k, v in raw.items()
            if k.endswith("_pos") and not k.startswith("robot0") and "_to_" not in k}  # fmt: skip


@pytest.mark.parametrize("kind", list(ONE_PER_KIND))
def test_reset_and_steps_in_the_perturbed_scene(kind):
    from vla_rl.benchmarks.libero import NOOP_ACTION
    from vla_rl.benchmarks.libero_pro import bddl_path, bddl_sections
    from vla_rl.core.benchmark import EnvConfig

    pro = bench(ONE_PER_KIND[kind])
    task = pro.tasks("eval")[0]
    env = pro.env_factory(EnvConfig(video_size=0))()
    try:
        obs, info = env.reset(options={"task": task, "init_id": task.init_ids[0]})
        assert obs["state"].shape == (8,) and obs["state"].dtype == np.float32
        assert not info["success"]
        for _ in range(3):
            obs, _, terminated, truncated, info = env.step(np.asarray(NOOP_ACTION))
        assert np.isfinite(obs["state"]).all() and not (terminated or truncated or info["success"])
        if kind in ("language", "task"):  # the policy reads what the perturbed env announces
            assert task.instruction == env._env.language_instruction
        if kind == "distractor":  # one object more than the standard scene, standing in it
            base = bench(pro.base_suite)._suite
            base_task = base.get_task(base.get_task_names().index(pro.base_task(task.name)))
            standard = bddl_sections(bddl_path(base_task))["objects"]
            positions = object_positions(env._last_raw)
            extra = set(positions) - standard
            assert len(extra) == 1 and standard <= set(positions), (extra, standard)
            assert np.abs(positions[extra.pop()]).max() < 2  # in the scene, not parked away
    finally:
        env.close()


def test_swap_puts_objects_where_others_stood_on_the_same_init_id():
    """Behaviour, not names: on init id 0, some object of the swapped scene stands far from its
    standard place, at the place another object holds in the standard scene."""
    from vla_rl.core.benchmark import EnvConfig

    swap = bench("libero_spatial_swap")
    name = swap.task_names()[0]
    positions = []
    for b, task_name in ((bench("libero_spatial"), swap.base_task(name)), (swap, name)):
        task = b.tasks("eval", [task_name])[0]
        env = b.env_factory(EnvConfig(video_size=0))()
        try:
            env.reset(options={"task": task, "init_id": 0})
            positions.append(object_positions(env._last_raw))
        finally:
            env.close()
    base, moved = positions
    assert set(base) == set(moved)
    far = [o for o in base if np.linalg.norm(moved[o][:2] - base[o][:2]) > 0.1]
    assert far, {o: np.linalg.norm(moved[o][:2] - base[o][:2]) for o in base}
    for o in far:
        nearest = min(np.linalg.norm(moved[o][:2] - base[p][:2]) for p in base if p != o)
        assert nearest < 0.05, (o, nearest)
