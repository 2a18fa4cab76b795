"""Meta-World's renderers are one per task and size per process, shared by its envs (an env per
slot times ten MT10 tasks of EGL contexts at ~180 MB each was OOM-killed on 24 GB), bounded,
and a shared or remade renderer draws exactly what the env's own renderer would."""

import numpy as np

from vla_rl.benchmarks import metaworld
from vla_rl.core.benchmark import EnvConfig, get_benchmark


def _frame(env, task, init=0):
    env.reset(options={"task": task, "init_id": int(task.init_ids[init])})
    for _ in range(3):
        env.step(np.full(4, 0.5, np.float32))
    return env.render()


def _own_frame(env, size):
    """What a renderer made for this env's own model draws (the pre-sharing behaviour)."""
    import mujoco  # after vla_rl.benchmarks.metaworld chose the headless GL backend

    model = env._env.model
    model.vis.quality.offsamples = 0  # fast_render, the default
    with mujoco.Renderer(model, height=size, width=size) as renderer:
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        renderer.update_scene(env._env.data, camera=metaworld.CAMERA)
        return np.ascontiguousarray(renderer.render()[::-1, ::-1])


def test_envs_share_a_task_renderer_and_each_draws_its_own_state(monkeypatch):
    monkeypatch.setattr(metaworld, "_RENDERERS", type(metaworld._RENDERERS)())
    monkeypatch.setattr(metaworld, "_OPEN_ENVS", [0])  # not other tests' envs left open
    (task,) = get_benchmark("metaworld").tasks("train", ["reach-v3"])
    env, other = (metaworld.MetaWorldTaskEnv(EnvConfig(video_size=48)) for _ in range(2))
    try:
        first = _frame(env, task, init=0)
        second = _frame(other, task, init=1)  # another start, through env's renderer
        assert len(metaworld._RENDERERS) == 1
        assert not np.array_equal(first, second)
        np.testing.assert_array_equal(second, _own_frame(other, 48))
        np.testing.assert_array_equal(env.render(), _own_frame(env, 48))
        env.close()
        assert len(metaworld._RENDERERS) == 1  # other still draws with it
    finally:
        env.close()
        other.close()
    assert not metaworld._RENDERERS  # the process's last env closed: its renderers freed


def test_renderers_are_bounded_and_a_remade_one_renders_the_same(monkeypatch):
    monkeypatch.setattr(metaworld, "_RENDERERS", type(metaworld._RENDERERS)())
    monkeypatch.setattr(metaworld, "MAX_RENDERERS", 2)
    tasks = get_benchmark("metaworld").tasks("train", metaworld.MT10[:3])
    env = metaworld.MetaWorldTaskEnv(EnvConfig(video_size=32))
    try:
        first = _frame(env, tasks[0])
        for task in tasks[1:]:
            _frame(env, task)
            assert len(metaworld._RENDERERS) <= 2
        assert len(metaworld._RENDERERS) == 2
        assert (tasks[0].name, 32, True) not in metaworld._RENDERERS  # evicted (fast_render)
        np.testing.assert_array_equal(_frame(env, tasks[0]), first)
    finally:
        env.close()


def _chunk_frames(env, task, record, chunks):
    """The frames a ChunkedEnv over `env` returns for one episode of the given chunks."""
    env.record_frames = record
    _, info = env.reset(options={"task": task, "init_id": int(task.init_ids[0])})
    frames = list(info["frames"])
    for chunk in chunks:
        *_, terminated, truncated, info = env.step(chunk)
        frames += info["frames"]
        if terminated or truncated:
            return frames
    raise AssertionError("the episode did not end")


def test_sampled_frames_drawn_from_snapshots_are_the_live_frames():
    """record_frames=F renders only the kept frames, after the episode, from render snapshots:
    byte for byte the frames "chunk" mode renders live at those steps, on three tasks whose
    scenes move differently (a door, a drawer, an object pushed)."""
    from vla_rl.rollout.chunked_env import ChunkedEnv
    from vla_rl.rollout.frames import kept_frames

    tasks = get_benchmark("metaworld").tasks("train", ["door-open-v3", "drawer-open-v3", "push-v3"])
    env = ChunkedEnv(metaworld.MetaWorldTaskEnv(EnvConfig(video_size=48, max_steps=15)))
    rng = np.random.default_rng(0)
    chunks = rng.uniform(-1, 1, (5, 3, 4)).astype(np.float32)  # 15 steps: truncated at the 5th
    try:
        for task in tasks:
            live = _chunk_frames(env, task, "chunk", chunks)
            sampled = _chunk_frames(env, task, 4, chunks)
            assert len(live) == 6 and len(sampled) == 4
            assert not np.array_equal(live[0], live[-1])  # the scene moved
            for i, frame in zip(kept_frames(6, 4), sampled):
                np.testing.assert_array_equal(frame, live[i])
            np.testing.assert_array_equal(env.render(), live[-1])  # the live poses put back
            longer = _chunk_frames(env, task, 16, chunks)  # a clip longer than the episode
            assert len(longer) == 6 and all(map(np.array_equal, longer, live))
    finally:
        env.close()
