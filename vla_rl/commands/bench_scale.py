"""`vla-rl bench-scale`: how rollouts scale over env workers, local vs Ray, in one interleaved run.

For every W in --workers, E in --envs-per-worker and backend in --backends (innermost, so that
the backends compared at one (W, E) run next to each other in time), it runs whole episodes
with B = W x E env slots through the rollout engine and a real policy (the bundled
`metaworld-flow` base by default), then one learner pass over what it collected, and splits the
wall time:

  env        the simulator's own cost on the critical path: env steps x the cost of one step
             (measured first, in this process) / min(W, cores)
  inference  time inside policy.sample_actions (the engine's policy_s)
  transfer   the rest of the rollout's wall time: messages, (de)serialising observations and
  + sync     chunks, waiting on the slowest worker, the engine's bookkeeping (rollout wall -
             env - inference)
  learner    one pass of a policy-gradient surrogate (-log pi of every collected chunk, Adam,
             minibatches of 256) over the rollout's decision steps: the same work for every
             backend, so it shows what share of a training step the rollout is

The split adds up only when the phases do not overlap, so the default here is one pipeline
group (--env.pipeline-groups 1: the driver waits for every worker before the next policy call).
The engine's default of 2 overlaps inference with env steps; measure it with
--env.pipeline-groups 2 (the throughput then is the one a training run gets, and "transfer +
sync" is what inference did not hide, possibly 0).

`--benchmark simulated` (benchmarks/simulated.py) burns --step-ms of CPU per env step and
carries an --image-size camera, so the table of a slow simulator is cheap to produce and means
the same on any machine; `--benchmark metaworld` measures the real one. Nothing here depends on
this machine: the same command runs on a bigger one (more --workers) or over a Ray cluster
(--env.ray-address).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vla_rl.core.benchmark import Benchmark, EnvConfig, EpisodeSpec, TaskSpec, get_benchmark
from vla_rl.core.config import ConfigError, parse_cli, to_dict
from vla_rl.evaluation.protocol import default_task_selection
from vla_rl.io.atomic import atomic_write_json
from vla_rl.io.provenance import provenance

DEFAULT_STEP_MS = 0.5  # see BenchScaleConfig.step_ms
LEARNER_MINIBATCH = 256  # decision steps per learner minibatch (GRPO's default minibatch size)


@dataclass
class BenchScaleConfig:
    """`vla-rl bench-scale`: env steps/s and the time split (env / inference / transfer /
    learner) over W workers x E envs per worker, for the local and Ray backends, interleaved."""

    benchmark: str = "simulated"
    """`simulated` (a step of --step-ms CPU time, Meta-World's shapes) or a registered benchmark."""
    task: str | None = None
    """Task to run (default: the benchmark's first task)."""
    policy: str = "metaworld-flow"
    """Policy doing the batched inference (a registry name or a checkpoint directory); the
    bundled flow base, whose chunk latency is 3.7 ms at batch 1 here (bench_policy_flow.json)."""
    backends: tuple[str, ...] = ("local", "ray")
    """Rollout backends to compare (the registered ones): local (worker processes), ray (Ray
    actors)."""
    workers: tuple[int, ...] = (1, 2, 4)
    """W values: env workers (processes or actors), 1 CPU reserved each on Ray."""
    envs_per_worker: tuple[int, ...] = (1, 4, 16)
    """E values: env slots per worker (B = W x E)."""
    step_ms: float | None = None
    """simulated only: CPU ms per env step. Default (None) 0.5 ms, Meta-World's: 1835 env
    steps/s in one process on the reference machine (docs/results/bench_metaworld_b8_ta8.json,
    sequential)."""
    image_size: int = 0
    """simulated only: S of a (1, S, S, 3) uint8 camera in every observation (0: state only)."""
    max_steps: int = 200
    """Episode horizon in env steps, every configuration alike."""
    env_steps: int = 8000
    """Env steps per measurement, rounded up to whole episodes and to a multiple of B of them
    (every slot runs as many episodes)."""
    learner: bool = True
    """Time one learner pass over each rollout (off: the rollout alone)."""
    repeats: int = 2
    """Rounds over every configuration, interleaved; medians are reported."""
    output: str | None = None
    """Write the table as JSON here (with config, commit and machine)."""
    env: EnvConfig = field(default_factory=lambda: EnvConfig(video_size=0, pipeline_groups=1))
    """Env settings shared by every configuration (num_envs, num_workers, backend and main_envs
    are set per configuration; ray_address joins a cluster). One pipeline group by default, so
    that the time split adds up (see the module's docstring)."""


def check(cfg: BenchScaleConfig) -> None:
    """Every setting, before anything starts (a 0 here would leave a loop waiting forever)."""
    for name in ("max_steps", "env_steps", "repeats"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    for name in ("workers", "envs_per_worker"):
        values = getattr(cfg, name)
        if not values or min(values) < 1:
            raise ConfigError(
                f"--{name.replace('_', '-')} must be integers >= 1, got {list(values)}"
            )
    from vla_rl.core.registry import BACKENDS, BENCHMARKS, check_choice

    check_choice("benchmark", cfg.benchmark, ["simulated", *BENCHMARKS.names()])
    bad = [b for b in cfg.backends if b not in BACKENDS]
    if bad or not cfg.backends:
        raise ConfigError(
            f"--backends: {bad or 'none given'}; valid choices: {', '.join(BACKENDS.names())}"
        )
    if (cfg.step_ms is not None and cfg.step_ms < 0) or cfg.image_size < 0:
        raise ConfigError("--step-ms and --image-size must be >= 0")
    if cfg.benchmark != "simulated" and (cfg.step_ms is not None or cfg.image_size):
        raise ConfigError("--step-ms and --image-size apply to --benchmark simulated only")


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def make_benchmark(cfg: BenchScaleConfig) -> Benchmark:
    if cfg.benchmark == "simulated":
        from vla_rl.benchmarks.simulated import SimulatedBenchmark

        step_ms = DEFAULT_STEP_MS if cfg.step_ms is None else cfg.step_ms
        return SimulatedBenchmark(step_ms, cfg.image_size, cfg.max_steps)
    return get_benchmark(cfg.benchmark, env=cfg.env)


def camera_settings(cfg: BenchScaleConfig) -> EnvConfig:
    """cfg.env with the simulated camera (--image-size) switched on where it is asked for."""
    return replace(cfg.env, images=bool(cfg.image_size), image_size=cfg.image_size or 128)


def measure_step_ms(benchmark: Benchmark, task: TaskSpec, cfg: BenchScaleConfig) -> float:
    """Wall-clock ms of one env step of the no-op action in this process, the median of 3
    timings of max_steps steps each (one episode): the simulator's own cost, without any
    messages."""
    env = benchmark.env_factory(camera_settings(cfg))()
    noop = np.asarray(benchmark.noop_action, dtype=np.float32)
    times = []
    try:
        for _ in range(4):  # the first is a warm-up
            env.reset(options={"task": task, "init_id": task.init_ids[0]})
            start = time.perf_counter()
            for _ in range(cfg.max_steps):
                env.step(noop)
            times.append((time.perf_counter() - start) / cfg.max_steps * 1000)
    finally:
        env.close()
    return float(np.median(times[1:]))


def learner_pass(policy: torch.nn.Module, records) -> int:
    """One epoch of -log pi(chunk) over the rollout's decision steps with a fresh Adam; returns
    the steps used. The policy's weights are put back afterwards, so that every configuration
    rolls out the same policy and runs the same episodes."""
    from vla_rl.core.trajectories import Trajectories

    weights = {k: v.clone() for k, v in policy.state_dict().items()}
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-5)
    trajs = Trajectories.from_episodes(records)
    t_idx, b_idx = trajs.valid.nonzero(as_tuple=True)
    order = torch.randperm(len(t_idx), generator=torch.Generator().manual_seed(0))
    policy.train()
    for start in range(0, len(order), LEARNER_MINIBATCH):
        rows = order[start : start + LEARNER_MINIBATCH]
        obs = trajs.gather_obs(t_idx[rows], b_idx[rows])
        sample = trajs.gather_samples(t_idx[rows], b_idx[rows])
        loss = -policy.log_prob(obs, sample).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy.eval()
    policy.load_state_dict(weights)
    return len(order)


def measure(
    cfg: BenchScaleConfig,
    benchmark: Benchmark,
    task: TaskSpec,
    policy,
    backend: str,
    workers: int,
    per_worker: int,
    sim_step_ms: float,
) -> dict:
    """One configuration: build its envs, warm them up, time one rollout and one learner pass."""
    from vla_rl.rollout.engine import RolloutEngine

    b = workers * per_worker
    env_cfg = replace(camera_settings(cfg), backend=backend, num_workers=workers, num_envs=b,
                      main_envs=0)  # fmt: skip
    # Whole waves of B episodes: a last wave that fills only some slots leaves workers idle
    # (the engine refills slots in order, so the first worker's), which is not scaling.
    n_episodes = math.ceil(cfg.env_steps / cfg.max_steps / b) * b
    episodes = [EpisodeSpec(task, task.init_ids[i % len(task.init_ids)]) for i in range(n_episodes)]
    venv = benchmark.make_env([task], env_cfg)
    try:
        engine = RolloutEngine(venv, env_cfg.pipeline_groups)
        warm = replace(task, max_steps=1)  # builds every slot's env and pays first resets
        engine.run(policy, [EpisodeSpec(warm, task.init_ids[0])] * b)
        records = engine.run(policy, episodes, keep_steps=cfg.learner)
        stats = engine.last_stats
    finally:
        venv.close()
    learner_s, learner_steps = 0.0, 0
    if cfg.learner:
        start = time.perf_counter()
        learner_steps = learner_pass(policy, records)
        learner_s = time.perf_counter() - start
    # The ideal compute, at most what inference left of the wall time (the in-process step cost
    # is measured once, on a noisy machine): the three parts add up to the rollout's wall time.
    ideal_s = stats.env_steps * sim_step_ms / 1000 / min(workers, cores())
    env_s = min(ideal_s, max(stats.wall_s - stats.policy_s, 0.0))
    transfer_s = stats.wall_s - env_s - stats.policy_s
    return {
        "backend": backend,
        "workers": workers,
        "envs_per_worker": per_worker,
        "num_envs": b,
        "env_steps": stats.env_steps,
        "decision_steps": stats.decision_steps,
        "rollout_s": stats.wall_s,
        "env_steps_per_s": stats.env_steps_per_s,
        "env_s": env_s,
        "env_ideal_s": ideal_s,
        "inference_s": stats.policy_s,
        "transfer_sync_s": transfer_s,
        "env_wait_s": stats.env_s,
        "learner_s": learner_s,
        "learner_decision_steps": learner_steps,
        "env_steps_per_s_with_learner": stats.env_steps / (stats.wall_s + learner_s),
    }


SPLIT = ("env_s", "inference_s", "transfer_sync_s", "learner_s")


def summarize(runs: list[dict]) -> list[dict]:
    """Median of every timing over the rounds of each (backend, W, E), and local/Ray ratios."""

    def config(r: dict) -> tuple:
        return r["workers"], r["envs_per_worker"], r["backend"]

    table = []
    for key in sorted({config(r) for r in runs}):
        same = [r for r in runs if config(r) == key]
        row = {k: same[0][k] for k in ("backend", "workers", "envs_per_worker", "num_envs")}
        for k in ("env_steps_per_s", "env_steps_per_s_with_learner", "rollout_s", *SPLIT):
            row[k] = float(np.median([r[k] for r in same]))
        total = row["rollout_s"] + row["learner_s"]
        row["split_fraction"] = {k.removesuffix("_s"): row[k] / total for k in SPLIT}
        row["rounds"] = len(same)
        table.append(row)
    for row in table:
        if row["backend"] == "ray":
            local = [t for t in table if config(t) == (*config(row)[:2], "local")]
            if local:
                row["over_local"] = row["env_steps_per_s"] / local[0]["env_steps_per_s"]
                row["over_local_paired"] = paired_ratio(runs, row["workers"],
                                                        row["envs_per_worker"])  # fmt: skip
    return table


def paired_ratio(runs: list[dict], workers: int, per_worker: int) -> float:
    """Median over rounds of Ray / local measured in the same round, next to each other in
    time: robust to a machine that is slower in one round than in another."""
    at = {(r["round"], r["backend"]): r["env_steps_per_s"] for r in runs
          if (r["workers"], r["envs_per_worker"]) == (workers, per_worker)}  # fmt: skip
    rounds = sorted({rnd for rnd, _ in at})
    return float(np.median([at[rnd, "ray"] / at[rnd, "local"] for rnd in rounds
                            if (rnd, "ray") in at and (rnd, "local") in at]))  # fmt: skip


def print_table(table: list[dict]) -> None:
    print(f"  {'backend':<7} {'W':>2} {'E':>3} {'B':>4} {'steps/s':>9} {'x local':>7} "
          f"{'paired':>6}   {'env':>5} {'infer':>5} {'xfer':>5} {'learn':>5}"
          "  (share of rollout + learner)")  # fmt: skip
    for row in table:
        share = row["split_fraction"]
        ratio = f"{row['over_local']:.2f}" if "over_local" in row else ""
        paired = f"{row['over_local_paired']:.2f}" if "over_local" in row else ""
        print(f"  {row['backend']:<7} {row['workers']:>2} {row['envs_per_worker']:>3} "
              f"{row['num_envs']:>4} {row['env_steps_per_s']:>9.1f} {ratio:>7} {paired:>6}   "
              f"{share['env']:>5.2f} {share['inference']:>5.2f} {share['transfer_sync']:>5.2f} "
              f"{share['learner']:>5.2f}")  # fmt: skip


def run_bench_scale(cfg: BenchScaleConfig) -> int:
    from vla_rl.core.policy import load_policy

    check(cfg)
    benchmark = make_benchmark(cfg)
    name = cfg.task or default_task_selection(benchmark)[0]
    task = replace(benchmark.tasks("train", [name])[0], max_steps=cfg.max_steps)
    # The simulated benchmark has Meta-World's spaces: its policies load as for Meta-World.
    shapes = get_benchmark("metaworld") if cfg.benchmark == "simulated" else benchmark
    policy = load_policy(cfg.policy, shapes)
    if "ray" in cfg.backends:  # one Ray for every configuration, with room for the largest W
        from vla_rl.rollout.ray_backend import connect, import_ray

        connect(import_ray(), cfg.env.ray_address, max(cfg.workers))
    sim_step_ms = measure_step_ms(benchmark, task, cfg)
    print(
        f"bench-scale {cfg.benchmark}/{name}: policy {cfg.policy}, backends {cfg.backends}, "
        f"W {cfg.workers} x E {cfg.envs_per_worker}, one env step {sim_step_ms:.3f} ms "
        f"(measured), image {cfg.image_size or 'none'}, horizon {cfg.max_steps}, "
        f"G={cfg.env.pipeline_groups}, {cores()} cores",
        flush=True,
    )
    runs = []
    # Threads of this process: 1 (the engine sets it for inference; the learner too, so the
    # learner's share does not depend on what the workers leave free).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for round_ in range(cfg.repeats):
            for w in cfg.workers:
                for e in cfg.envs_per_worker:
                    for backend in cfg.backends:
                        run = measure(cfg, benchmark, task, policy, backend, w, e,
                                      sim_step_ms)  # fmt: skip
                        run["round"] = round_
                        runs.append(run)
                        print(f"  round {round_ + 1}: {backend:<5} W={w} E={e:<3} "
                              f"{run['env_steps_per_s']:8.1f} env steps/s, learner "
                              f"{run['learner_s']:.2f} s", flush=True)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    table = summarize(runs)
    print_table(table)
    if cfg.output:
        out = {"config": to_dict(cfg), "task": name, "cores": cores(),
               "env_step_ms_measured": sim_step_ms, "table": table, "runs": runs,
               "provenance": provenance()}  # fmt: skip
        atomic_write_json(Path(cfg.output), out)
        print(f"  written to {cfg.output}")
    return 0


def main(args: list[str]) -> int:
    cfg = parse_cli(BenchScaleConfig, args, prog="vla-rl bench-scale",
                    description=BenchScaleConfig.__doc__)  # fmt: skip
    return run_bench_scale(cfg)
