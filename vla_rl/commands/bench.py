"""`vla-rl bench`: rollout throughput, three ways side by side in one run.

  raw:        the simulator alone, B envs split over W processes, stepped with the no-op action
              in a tight loop (no policy, no messages): the ceiling for W processes.
  engine:     the rollout engine (ChunkedVectorEnv + RolloutEngine) with B envs in W workers and
              a trivial policy called once per decision step on the whole batch.
  sequential: one env and one policy call per env step in a single process: what a plain
              evaluation loop does.
  gym_async:  gymnasium's own AsyncVectorEnv over the same B envs with the same policy called
              once per chunk on the whole batch: the vector env a user would otherwise pick.
              It has no setting for several envs per process, so it runs B processes on the
              same cores.

All four run the same task, the same horizon and the same resets, and count env steps per
second of wall-clock. Ratios: engine / raw (target >= 0.9), engine / sequential (on 2 cores
the physical limit is about 2x) and engine / gym_async.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import gymnasium as gym
import numpy as np

from vla_rl.core.benchmark import Benchmark, EnvConfig, EpisodeSpec, TaskSpec, get_benchmark
from vla_rl.core.config import ConfigError, parse_cli, to_dict
from vla_rl.evaluation.protocol import default_task_selection
from vla_rl.io.atomic import atomic_write_json
from vla_rl.io.provenance import provenance


@dataclass
class BenchConfig:
    """`vla-rl bench`: env steps/s of the rollout engine vs the raw simulator vs a plain loop
    vs gymnasium's AsyncVectorEnv."""

    benchmark: str = "metaworld"
    """Benchmark to measure."""
    task: str | None = None
    """Task to run (default: the benchmark's first task)."""
    steps: int = 20000
    """Env steps per mode (per measurement). Meta-World runs ~1000 steps/s per core."""
    max_steps: int = 200
    """Episode horizon for all modes, so resets cost the same everywhere."""
    chunk_size: int = 1
    """Ta of the trivial policy in the engine, sequential and gym_async modes. 1 = a closed-loop
    policy, the worst case for the engine (one message per env step)."""
    repeats: int = 3
    """Rounds of (raw, engine, sequential, gym_async), interleaved so that slow phases of a noisy
    VM hit every mode alike; medians are reported."""
    output: str | None = None
    """Write the measurements as JSON here (with config, commit and machine)."""
    env: EnvConfig = field(default_factory=lambda: EnvConfig(video_size=0))


def _episodes(task: TaskSpec, n: int) -> list[EpisodeSpec]:
    return [EpisodeSpec(task, task.init_ids[i % len(task.init_ids)]) for i in range(n)]


def _noop(benchmark: Benchmark) -> np.ndarray:
    return np.asarray(benchmark.noop_action, dtype=np.float32)


def _raw_worker(env_fn, episodes, steps, noop, barrier, queue) -> None:
    envs = [env_fn() for _ in episodes]
    for env, ep in zip(envs, episodes):  # first reset (and env build) outside the timing
        env.reset(options={"task": ep.task, "init_id": ep.init_id})
    barrier.wait()
    start = time.perf_counter()
    done = 0
    while done < steps:
        for env, ep in zip(envs, episodes):
            _, _, term, trunc, _ = env.step(noop)
            done += 1
            if term or trunc:
                env.reset(options={"task": ep.task, "init_id": ep.init_id})
    queue.put((done, time.perf_counter() - start))
    for env in envs:
        env.close()


def simulator_processes(cfg: EnvConfig) -> int:
    """Processes that step envs in the engine: the workers, plus the main process when it hosts
    slots too. The raw baseline gets exactly this many."""
    workers = min(cfg.num_workers, cfg.num_envs - cfg.main_envs)
    return max(workers + (1 if cfg.main_envs > 0 or workers == 0 else 0), 1)


def measure_raw(benchmark: Benchmark, task: TaskSpec, cfg: BenchConfig) -> dict:
    b, w = cfg.env.num_envs, simulator_processes(cfg.env)
    env_fn = benchmark.env_factory(cfg.env)
    eps = _episodes(task, b)
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(w + 1), ctx.Queue()
    blocks = np.array_split(np.arange(b), w)
    procs = []
    for block in blocks:
        proc = ctx.Process(
            target=_raw_worker,
            args=(
                env_fn,
                [eps[i] for i in block],
                cfg.steps // w,
                _noop(benchmark),
                barrier,
                queue,
            ),
        )
        proc.start()
        procs.append(proc)
    barrier.wait()
    results = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    steps = sum(r[0] for r in results)
    wall = max(r[1] for r in results)
    return {"env_steps": steps, "wall_s": wall, "env_steps_per_s": steps / wall, "processes": w}


def measure_engine(benchmark: Benchmark, task: TaskSpec, cfg: BenchConfig) -> dict:
    from vla_rl.policies.trivial import ZeroPolicy
    from vla_rl.rollout.engine import RolloutEngine

    policy = ZeroPolicy.for_benchmark(benchmark, chunk_size=cfg.chunk_size)
    venv = benchmark.make_env([task], cfg.env)
    try:
        engine = RolloutEngine(venv, cfg.env.pipeline_groups)
        # Warm-up: build every slot's env and pay first-reset costs outside the timing.
        engine.run(policy, _episodes(replace(task, max_steps=1), cfg.env.num_envs))
        n_episodes = max(cfg.steps // task.max_steps, cfg.env.num_envs)
        engine.run(policy, _episodes(task, n_episodes))
        stats = engine.last_stats
    finally:
        venv.close()
    return {
        "env_steps": stats.env_steps,
        "wall_s": stats.wall_s,
        "env_steps_per_s": stats.env_steps_per_s,
        "policy_s": stats.policy_s,
        "env_wait_s": stats.env_s,
    }


def measure_sequential(benchmark: Benchmark, task: TaskSpec, cfg: BenchConfig) -> dict:
    from vla_rl.policies.trivial import ZeroPolicy

    policy = ZeroPolicy.for_benchmark(benchmark, chunk_size=cfg.chunk_size)
    env = benchmark.env_factory(cfg.env)()
    ep = _episodes(task, 1)[0]
    obs, _ = env.reset(options={"task": ep.task, "init_id": ep.init_id})
    steps = 0
    start = time.perf_counter()
    while steps < cfg.steps // 2:  # half the steps: the single process is the slow one
        batch = {k: v[None] for k, v in obs.items()}
        batch.update(instruction=[task.instruction], task=[task.name])
        chunk = policy.sample_actions(batch).actions[0].numpy()
        for action in chunk:
            obs, _, term, trunc, _ = env.step(action)
            steps += 1
            if term or trunc:
                obs, _ = env.reset(options={"task": ep.task, "init_id": ep.init_id})
                break
    wall = time.perf_counter() - start
    env.close()
    return {"env_steps": steps, "wall_s": wall, "env_steps_per_s": steps / wall}


@dataclass
class _FixedEpisodeEnvFactory:
    """Builds an env that always resets into one episode (task, init id): AsyncVectorEnv's
    autoreset calls `reset()` without options, which our envs refuse (they need a task), and
    its `reset(options=...)` gives every env the same options, where each slot here has its
    own init id as in the other modes. Picklable, for the spawned workers."""

    env_fn: Callable[[], gym.Env]
    episode: EpisodeSpec

    def __call__(self) -> gym.Env:
        return _FixedEpisodeEnv(self.env_fn(), self.episode)


class _FixedEpisodeEnv(gym.Wrapper):
    def __init__(self, env: gym.Env, episode: EpisodeSpec):
        super().__init__(env)
        self.options = {"task": episode.task, "init_id": episode.init_id}

    def reset(self, *, seed=None, options=None):
        return self.env.reset(seed=seed, options=self.options)


def measure_gym_async(benchmark: Benchmark, task: TaskSpec, cfg: BenchConfig) -> dict:
    """gymnasium.vector.AsyncVectorEnv: one chunk (B, Ta, Da) per policy call on the whole
    batch, executed as Ta vector steps of one action each.

    Autoreset is SAME_STEP: an env whose episode ends is reset inside that same step call, so
    every call is one real env step of each of the B envs (count B per call) and no call is
    spent on resets alone (NEXT_STEP's reset-only step would have to be left out of the count).
    A lockstep vector env cannot drop the rest of a chunk for one env as the engine does: an env
    that ends mid-chunk runs the remaining actions in its next episode, real env steps too."""
    from vla_rl.policies.trivial import ZeroPolicy

    policy = ZeroPolicy.for_benchmark(benchmark, chunk_size=cfg.chunk_size)
    b = cfg.env.num_envs
    env_fn = benchmark.env_factory(cfg.env)
    fns = [_FixedEpisodeEnvFactory(env_fn, ep) for ep in _episodes(task, b)]
    envs = gym.vector.AsyncVectorEnv(
        fns, context="spawn", autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )  # spawn, as the other modes' processes: no forked simulator or torch state
    try:
        obs, _ = envs.reset()  # builds every env and pays the first reset outside the timing
        steps = 0
        start = time.perf_counter()
        while steps < cfg.steps:
            batch = dict(obs, instruction=[task.instruction] * b, task=[task.name] * b)
            chunk = policy.sample_actions(batch).actions.numpy()  # (B, Ta, Da)
            for a in range(chunk.shape[1]):
                obs, _, _, _, _ = envs.step(chunk[:, a])
                steps += b
                if steps >= cfg.steps:  # cfg.steps rounded up to B, as the other modes
                    break
        wall = time.perf_counter() - start
    finally:
        envs.close()
    return {"env_steps": steps, "wall_s": wall, "env_steps_per_s": steps / wall, "processes": b}


def run_rollout_bench(cfg: BenchConfig) -> int:
    import os

    # before any env starts: a 0 here left the measuring loops waiting forever
    for name in ("steps", "max_steps", "chunk_size", "repeats"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    benchmark = get_benchmark(cfg.benchmark, env=cfg.env)
    name = cfg.task or default_task_selection(benchmark)[0]
    task = replace(benchmark.tasks("train", [name])[0], max_steps=cfg.max_steps)
    print(
        f"bench {cfg.benchmark}/{name}: B={cfg.env.num_envs} envs, W={cfg.env.num_workers} "
        f"workers + {cfg.env.main_envs} envs in the main process "
        f"({simulator_processes(cfg.env)} simulator processes), G={cfg.env.pipeline_groups}, "
        f"Ta={cfg.chunk_size}, images={cfg.env.images}, {os.cpu_count()} cores"
    )
    modes = (("raw", measure_raw), ("engine", measure_engine), ("sequential", measure_sequential),
             ("gym_async", measure_gym_async))  # fmt: skip
    runs: dict[str, list[dict]] = {mode: [] for mode, _ in modes}
    for round_ in range(cfg.repeats):
        for mode, fn in modes:
            run = fn(benchmark, task, cfg)
            runs[mode].append(run)
            print(
                f"  round {round_ + 1}: {mode:<10} {run['env_steps_per_s']:8.1f} env steps/s "
                f"({run['env_steps']} steps in {run['wall_s']:.1f} s)",
                flush=True,
            )
    results: dict = {"runs": runs}
    for mode, _ in modes:
        results[f"{mode}_steps_per_s"] = float(
            np.median([r["env_steps_per_s"] for r in runs[mode]])
        )
    engine = results["engine_steps_per_s"]
    results["engine_over_raw"] = engine / results["raw_steps_per_s"]
    results["engine_over_sequential"] = engine / results["sequential_steps_per_s"]
    results["engine_over_gym_async"] = engine / results["gym_async_steps_per_s"]
    print(
        f"  medians: raw {results['raw_steps_per_s']:.1f}, engine {engine:.1f}, "
        f"sequential {results['sequential_steps_per_s']:.1f}, "
        f"gym_async {results['gym_async_steps_per_s']:.1f} env steps/s"
    )
    print(f"  engine / raw        = {results['engine_over_raw']:.2f}")
    print(f"  engine / sequential = {results['engine_over_sequential']:.2f}")
    print(f"  engine / gym_async  = {results['engine_over_gym_async']:.2f}")
    if cfg.output:
        out = {"config": to_dict(cfg), "task": name, "results": results, "provenance": provenance()}
        atomic_write_json(Path(cfg.output), out)
        print(f"  written to {cfg.output}")
    return 0


def main(args: list[str]) -> int:
    cfg = parse_cli(BenchConfig, args, prog="vla-rl bench", description=BenchConfig.__doc__)
    return run_rollout_bench(cfg)
