"""One env worker's rendering under srpo on MT10: 8 envs, each episode a random MT10 task, one
128 px frame per decision step. Renderers shared per task (the code) against one per env and
task under the same bound of 24 (the previous code's keying, emulated by wrapping `_renderer`),
interleaved; time, renderers made and resident memory per mode (docs/RESULTS.md).
Usage: python docs/results/render_memory/share_probe.py [EPISODES_PER_ENV]"""

import os
import sys
import time

import numpy as np

from vla_rl.benchmarks import metaworld
from vla_rl.core.benchmark import EnvConfig, get_benchmark

ENVS, FRAMES, SIZE = 8, 63, 128  # 8 envs per worker (16 over 2); 500 steps / chunk 8 frames
EPISODES = int(sys.argv[1]) if len(sys.argv) > 1 else 20


def rss_mb() -> int:
    status = open(f"/proc/{os.getpid()}/status").read()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


shared = metaworld._renderer
made = [0]


def counting(task, model, size, fast_render):
    before = len(metaworld._RENDERERS), (task, size, fast_render) in metaworld._RENDERERS
    out = shared(task, model, size, fast_render)
    made[0] += not before[1]
    return out


def per_env(task, model, size, fast_render):  # the key carries the env (its model)
    return counting(f"{task}/{id(model)}", model, size, fast_render)


tasks = get_benchmark("metaworld").tasks("train", metaworld.MT10)
envs = [metaworld.MetaWorldTaskEnv(EnvConfig(video_size=SIZE)) for _ in range(ENVS)]
print(f"{ENVS} envs, {EPISODES} episodes each, {FRAMES} frames of {SIZE} px per episode")
for rnd in range(2):
    for mode, fn in (("shared per task", counting), ("one per env and task", per_env)):
        for r in list(metaworld._RENDERERS.values()):
            r.close()
        metaworld._RENDERERS.clear()
        metaworld._renderer = fn
        made[0] = 0
        rng = np.random.default_rng(0)  # the same task sequence for both modes
        t0 = time.time()
        for _ in range(EPISODES):
            for env in envs:
                task = tasks[rng.integers(len(tasks))]
                env.reset(options={"task": task, "init_id": int(task.init_ids[0])})
                for _ in range(FRAMES):
                    env.step(np.zeros(4, np.float32))
                    env.render()
        spent = time.time() - t0
        print(
            f"round {rnd} {mode:>22}: {spent:6.1f} s, {spent / (EPISODES * ENVS):.3f} s/episode, "
            f"{made[0]} renderers made, {rss_mb()} MB resident"
        )
