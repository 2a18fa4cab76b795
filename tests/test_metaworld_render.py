"""Meta-World's renderers are bounded per process (an env per slot times ten MT10 tasks of EGL
contexts at ~180 MB each was OOM-killed on 24 GB), and a renderer made again after eviction
renders the same frame."""

import numpy as np

from vla_rl.benchmarks import metaworld
from vla_rl.core.benchmark import EnvConfig, get_benchmark


def _frame(env, task):
    env.reset(options={"task": task, "init_id": int(task.init_ids[0])})
    for _ in range(3):
        env.step(np.full(4, 0.5, np.float32))
    return env.render()


def test_renderers_are_bounded_and_a_remade_one_renders_the_same(monkeypatch):
    monkeypatch.setattr(metaworld, "MAX_RENDERERS", 2)
    tasks = get_benchmark("metaworld").tasks("train", metaworld.MT10[:3])
    env = metaworld.MetaWorldTaskEnv(EnvConfig(video_size=32))
    other = metaworld.MetaWorldTaskEnv(EnvConfig(video_size=32))
    try:
        first = _frame(env, tasks[0])
        for task in tasks[1:]:
            _frame(env, task)
            assert len(metaworld._RENDERERS) <= 2
        assert (env._number, tasks[0].name, 32) not in metaworld._RENDERERS  # evicted
        _frame(other, tasks[1])  # another env's renderer counts against the same bound
        assert len(metaworld._RENDERERS) == 2
        np.testing.assert_array_equal(_frame(env, tasks[0]), first)
    finally:
        env.close()
        other.close()
    assert not [k for k in metaworld._RENDERERS if k[0] in (env._number, other._number)]
