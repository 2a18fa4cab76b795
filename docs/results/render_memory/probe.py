"""Resident memory of one Meta-World env as it renders each MT10 task at 128 px, then as
renderers are made and closed in turn (docs/RESULTS.md, "srpo on MT10 was OOM-killed").
Usage: python docs/results/render_memory/probe.py"""

import os
import time

import numpy as np

from vla_rl.benchmarks.metaworld import MT10, MetaWorldTaskEnv
from vla_rl.core.benchmark import EnvConfig, get_benchmark


def rss_mb() -> int:
    status = open(f"/proc/{os.getpid()}/status").read()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


import mujoco  # noqa: E402  (after the env module has chosen the headless GL backend)

tasks = get_benchmark("metaworld").tasks("train", MT10)
env = MetaWorldTaskEnv(EnvConfig(video_size=128))
print("start", rss_mb(), "MB")
for rnd in range(2):
    t0 = time.time()
    for task in tasks:
        env.reset(options={"task": task, "init_id": int(task.init_ids[0])})
        for _ in range(60):
            env.step(np.zeros(4, np.float32))
            env.render()
    print(f"all 10 tasks rendered, round {rnd}: {rss_mb()} MB, {time.time() - t0:.1f} s")
for i in range(20):  # a renderer made and closed per episode
    task = tasks[i % 10]
    env.reset(options={"task": task, "init_id": int(task.init_ids[0])})
    t0 = time.time()
    r = mujoco.Renderer(env._env.model, 128, 128)
    made = time.time() - t0
    r.update_scene(env._env.data)
    r.render()
    r.close()
    if i % 5 == 4:
        print(f"after {i + 1} create/close cycles: {rss_mb()} MB (last create {made:.2f} s)")
