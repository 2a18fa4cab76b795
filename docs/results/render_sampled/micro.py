"""One Meta-World env, one 500-step episode per MT10 task in chunks of 8 random actions (63
frames at 128 px): no frames, every chunk's frame rendered live ("chunk"), and the 16 an
SRPO encoder samples drawn from render snapshots after the episode (16); rounds interleaved.

python docs/results/render_sampled/micro.py > docs/results/render_sampled/micro.txt
"""

import time

import numpy as np

from vla_rl.benchmarks import metaworld
from vla_rl.core.benchmark import EnvConfig, get_benchmark
from vla_rl.rollout.chunked_env import ChunkedEnv

tasks = get_benchmark("metaworld").tasks("train", metaworld.MT10)
env = ChunkedEnv(metaworld.MetaWorldTaskEnv(EnvConfig(video_size=128)))
rng = np.random.default_rng(0)


def episode(task, record) -> int:
    """Run one episode of `task` recording `record`; the number of frames returned."""
    env.record_frames = record
    env.reset(options={"task": task, "init_id": int(task.init_ids[0])})
    frames = 0
    while True:
        *_, terminated, truncated, info = env.step(rng.uniform(-1, 1, (8, 4)).astype(np.float32))
        frames += len(info.get("frames", []))
        if terminated or truncated:
            return frames


for task in tasks:  # build every task's env and renderer first
    episode(task, "chunk")
for r in range(3):
    for record in (False, "chunk", 16):
        t = time.perf_counter()
        n = sum(episode(task, record) for task in tasks)
        dt = time.perf_counter() - t
        print(f"round {r} record {record!s:6}: {dt / len(tasks):.3f} s/episode, {n} frames",
              flush=True)  # fmt: skip
env.close()
