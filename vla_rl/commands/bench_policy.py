"""`vla-rl bench-policy`: a policy's cost on this machine, in two measurements.

latency:    seconds per `sample_actions` call (one action chunk per observation) at batch 1
            and batch 16, on real observations of the benchmark, median of repeated calls.
throughput: the same evaluation episodes (the first eval initial states of each task) run
            twice, side by side: by the rollout engine (B envs in W worker processes, one
            batched policy call per decision step for all envs that are waiting), and by a
            sequential loop (one env in this process, one policy call of batch 1 per decision
            step). Env steps per second of wall-clock, and the ratio engine / sequential.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_rl.core.benchmark import EnvConfig, first_episodes, get_benchmark
from vla_rl.core.config import ConfigError, parse_cli, to_dict
from vla_rl.core.load_options import BaseLoadConfig
from vla_rl.core.types import index_obs
from vla_rl.evaluation.protocol import default_task_selection
from vla_rl.io.atomic import atomic_write_json
from vla_rl.io.provenance import provenance
from vla_rl.methods.taco.rerank import RerankPolicy, rerank_policy


@dataclass
class PolicyBenchConfig:
    """`vla-rl bench-policy`: chunk latency (batch 1 and 16) and engine-vs-sequential eval
    throughput of a policy."""

    policy: str = "metaworld-flow"
    """A registered policy name or a checkpoint directory."""
    base_path: str | None = None
    """With a real VLA family as --policy (openvla, openvla-oft, pi0, smolvla): the published
    checkpoint directory in that family's format (README "Real VLA bases")."""
    base_load: BaseLoadConfig = field(default_factory=BaseLoadConfig)
    """How a real VLA checkpoint is loaded (unnorm key, dtype, cameras, ...)."""
    benchmark: str = "metaworld"
    tasks: tuple[str, ...] = ()
    """Tasks for the throughput episodes; empty = the benchmark's default set (MT10)."""
    episodes: int = 2
    """Eval episodes per task in each throughput mode (the same ones in both); 0 measures the
    latency only (e.g. for a random-weight policy of a family without a trained checkpoint)."""
    batch_sizes: tuple[int, ...] = (1, 16)
    """Batch sizes of the latency measurement."""
    latency_calls: int = 20
    """Timed `sample_actions` calls per batch size (after 2 warm-up calls); the median is kept."""
    deterministic: bool = True
    """Sample as the eval protocol does (deterministic by default)."""
    rerank: str = "none"
    """Measure the policy under test-time reranking (as `vla-rl eval --rerank`): none, taco or
    random. With taco or random the latency is also measured for the base alone (one sample)
    and for the same reranking with naive batching (every observation re-encoded K times)."""
    candidates: int = 16
    """K candidates per decision step when reranking."""
    verifier: str | None = None
    """The TACO verifier directory (as `vla-rl eval --verifier`)."""
    threads: int = 1
    """torch intra-op threads for the latency measurement (rollouts always infer with 1, see
    RolloutEngine)."""
    output: str | None = None
    """Write the measurements as JSON here (with config, commit and machine)."""
    env: EnvConfig = field(default_factory=lambda: EnvConfig(video_size=0))


def chunk_latency(policy, obs, batch_size: int, calls: int, deterministic: bool) -> float:
    """Median seconds per sample_actions call on `batch_size` observations."""
    rows = np.arange(batch_size) % len(obs["instruction"])
    batch = index_obs(obs, rows)
    times = []
    with torch.no_grad():
        for i in range(calls + 2):
            start = time.perf_counter()
            policy.sample_actions(batch, deterministic)
            if i >= 2:  # the first calls pay one-off costs (allocations, lazy init)
                times.append(time.perf_counter() - start)
    return float(np.median(times))


def run_policy_bench(cfg: PolicyBenchConfig) -> dict[str, Any]:
    from vla_rl.core.policy import load_policy
    from vla_rl.rollout.engine import RolloutEngine

    if cfg.episodes < 0 or cfg.latency_calls < 1 or cfg.threads < 1 or cfg.candidates < 1:
        raise ConfigError(
            "--latency-calls, --threads and --candidates must be >= 1, --episodes >= 0"
        )
    if not cfg.batch_sizes or min(cfg.batch_sizes) < 1:
        raise ConfigError(f"--batch-sizes must be >= 1 each, got {list(cfg.batch_sizes)}")
    benchmark = get_benchmark(cfg.benchmark, env=cfg.env)
    names = benchmark.resolve_task_names(list(cfg.tasks) or default_task_selection(benchmark))
    base = load_policy(cfg.policy, benchmark, cfg.base_path, cfg.base_load)
    base.eval()
    policy = rerank_policy(base, cfg.policy, cfg.rerank, cfg.candidates, "fresh", cfg.verifier)
    compared = {"": policy}
    if policy is not base:  # the reranked policy against one sample and against naive batching
        naive = RerankPolicy(base, policy.scorer, cfg.candidates, policy.selection,
                             share_prefix=False)  # fmt: skip
        compared = {"": policy, "single_": base, "naive_rerank_": naive}
    tasks = benchmark.tasks("eval", names)
    episodes = first_episodes(tasks, cfg.episodes)

    def rollout(env_cfg: EnvConfig, groups: int) -> dict[str, Any]:
        venv = policy.wrap_env(benchmark.make_env(tasks, env_cfg))
        try:
            engine = RolloutEngine(venv, groups)
            start = time.perf_counter()
            records = engine.run(policy, episodes, deterministic=cfg.deterministic, seed=0)
            wall = time.perf_counter() - start
        finally:
            venv.close()
        steps = sum(r.env_steps for r in records)
        return {"wall_s": round(wall, 2), "env_steps": steps,
                "env_steps_per_s": round(steps / wall, 1),
                "episodes_per_s": round(len(records) / wall, 3),
                "policy_s": round(engine.last_stats.policy_s, 2),
                "success_rate": round(float(np.mean([r.success for r in records])), 3)}  # fmt: skip

    throughput: dict[str, Any] = {}
    if cfg.episodes:
        one_env = dataclasses.replace(cfg.env, num_envs=1, num_workers=0, main_envs=0)
        sequential = rollout(one_env, 1)
        engine = rollout(cfg.env, cfg.env.pipeline_groups)
        ratio = engine["env_steps_per_s"] / sequential["env_steps_per_s"]
        throughput = {"sequential": sequential, "engine": engine,
                      "engine_over_sequential": round(ratio, 2)}  # fmt: skip

    # Latency on observations of the benchmark: one reset state per task, cycled to the batch.
    slots = list(range(len(tasks)))
    one_each = dataclasses.replace(cfg.env, num_envs=len(tasks), num_workers=0, main_envs=0)
    venv = policy.wrap_env(benchmark.make_env(tasks, one_each))
    try:
        venv.reset_slots(slots, first_episodes(tasks, 1))
        obs = venv.observe(slots)
    finally:
        venv.close()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        latency = {f"{prefix}latency_s_per_chunk": {
                       str(b): round(chunk_latency(p, obs, b, cfg.latency_calls,
                                                   cfg.deterministic), 5)
                       for b in cfg.batch_sizes}
                   for prefix, p in compared.items()}  # fmt: skip
    finally:
        torch.set_num_threads(threads)

    result = {
        "policy": cfg.policy,
        "chunk_size": policy.chunk_size,
        **latency,
        "throughput": throughput,
        "episodes": len(episodes),
        "config": to_dict(cfg),
        "provenance": provenance(),
    }
    if cfg.output:
        atomic_write_json(Path(cfg.output), result)
    return result


def main(args: list[str]) -> int:
    cfg = parse_cli(
        PolicyBenchConfig, args, prog="vla-rl bench-policy", description=PolicyBenchConfig.__doc__
    )
    res = run_policy_bench(cfg)
    print(f"policy {cfg.policy} (Ta = {res['chunk_size']})")
    rerank = f"rerank {cfg.rerank}, K = {cfg.candidates}"
    for key, what in (("single_", "one sample"), ("", rerank if cfg.rerank != "none" else ""),
                      ("naive_rerank_", f"{rerank}, naive batching")):  # fmt: skip
        for b, s in res.get(f"{key}latency_s_per_chunk", {}).items():
            print(f"  latency per chunk, batch {b:>3}: {s * 1000:8.2f} ms  {what}")
    t = res["throughput"]
    if not t:
        return 0
    for mode in ("sequential", "engine"):
        m = t[mode]
        print(f"  {mode:<10} {m['env_steps_per_s']:8.1f} env steps/s  {m['episodes_per_s']:.3f} "
              f"episodes/s  success {m['success_rate']:.2f}")  # fmt: skip
    print(
        f"  engine / sequential: {t['engine_over_sequential']:.2f}x over {res['episodes']} "
        "episodes each"
    )
    return 0
