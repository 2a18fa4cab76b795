"""`vla-rl eval`: the fixed eval protocol on a policy (optionally reranked at test time)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from vla_rl.core.benchmark import EnvConfig
from vla_rl.core.config import ConfigError, parse_cli, to_dict
from vla_rl.core.load_options import BaseLoadConfig
from vla_rl.evaluation.protocol import format_table
from vla_rl.io.atomic import check_output_location


@dataclass
class EvalConfig:
    """`vla-rl eval`: evaluate a policy on a benchmark's eval split."""

    policy: str = "scripted"
    """A registered policy name (see `vla-rl benchmarks`) or a checkpoint directory."""
    base_path: str | None = None
    """With a real VLA family as --policy (openvla, openvla-oft, pi0, smolvla): the published
    checkpoint directory in that family's format (README "Real VLA bases")."""
    base_load: BaseLoadConfig = field(default_factory=BaseLoadConfig)
    """How a real VLA checkpoint is loaded (unnorm key, dtype, cameras, ...)."""
    benchmark: str = "metaworld"
    """A registered benchmark: metaworld, libero_spatial, libero_object, libero_goal, libero_10,
    libero_90."""
    tasks: tuple[str, ...] = ()
    """Task names and/or task-set names (e.g. MT10). Empty: the benchmark's default set
    (Meta-World: MT10; LIBERO: the whole suite)."""
    episodes: int | None = None
    """Episodes per task, taken in order from the eval split. None: all eval initial states
    (Meta-World 50, LIBERO 25 per task)."""
    output_dir: str | None = None
    """Where results.json and videos go. None: runs/eval/<benchmark>/<timestamp>."""
    seed: int = 0
    """Seeds the policy's sampling; env initial states are fixed by the eval split itself."""
    deterministic: bool = True
    """Use the policy's deterministic action (greedy tokens / mean). False samples, as
    SimpleVLA-RL and RLinf evaluate their RL checkpoints."""
    videos: int = 0
    """Episodes per task saved as MP4 (the first ones of each task)."""
    rerank: str = "none"
    """Test-time reranking (vla_rl/rerank.py): none; taco (execute the candidate the TACO
    verifier gives the highest pseudo-count); random (a random one of the K candidates: the
    control that spends the same compute without a verifier)."""
    candidates: int = 16
    """K candidate chunks per decision step when reranking (TACO: 16 for OpenVLA, 50 for pi0.5)."""
    noise: str = "fresh"
    """Reranking candidates' sampling noise: fresh every step, or a fixed bank (seed 42, TACO's
    choice) so candidate k gets the same noise at every step."""
    verifier: str | None = None
    """The TACO verifier directory (from `vla-rl fit-verifier`). None: <checkpoint>/taco_verifier,
    or for a registered policy name runs/verifiers/<name> when you have fitted one, else the
    verifier a bundled base ships with (its README.md says how it was fitted)."""
    progress: bool = True
    """Show a progress bar (episodes/s, ETA, running success)."""
    env: EnvConfig = field(default_factory=EnvConfig)


def main(args: list[str]) -> int:
    from vla_rl.core.benchmark import apply_policy_observation, get_benchmark, observation_label
    from vla_rl.core.policy import load_policy
    from vla_rl.evaluation.protocol import evaluate
    from vla_rl.methods.taco.rerank import find_verifier, rerank_policy

    cfg = parse_cli(EvalConfig, args, prog="vla-rl eval", description=EvalConfig.__doc__ or "")
    if cfg.episodes is not None and cfg.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {cfg.episodes}")
    if cfg.videos < 0:
        raise ConfigError(f"--videos must be >= 0, got {cfg.videos}")
    if cfg.candidates < 1:
        raise ConfigError(f"--candidates must be >= 1, got {cfg.candidates}")
    benchmark = get_benchmark(cfg.benchmark, env=cfg.env)
    # Validate every name before any env starts or any file is written.
    benchmark.resolve_task_names(list(cfg.tasks) or None)
    policy = load_policy(cfg.policy, benchmark, cfg.base_path, cfg.base_load)
    cfg.env = apply_policy_observation(benchmark, cfg.env, policy)
    if cfg.rerank == "taco" and cfg.verifier is None:  # results.json names the one used
        cfg.verifier = str(find_verifier(cfg.policy))
    policy = rerank_policy(policy, cfg.policy, cfg.rerank, cfg.candidates, cfg.noise, cfg.verifier)
    out = Path(cfg.output_dir or f"runs/eval/{cfg.benchmark}/{datetime.now():%Y%m%d-%H%M%S}")
    check_output_location(out, directory=True, flag="--output-dir")
    results = evaluate(
        policy,
        benchmark,
        task_names=list(cfg.tasks) or None,
        episodes_per_task=cfg.episodes,
        env_cfg=cfg.env,
        seed=cfg.seed,
        deterministic=cfg.deterministic,
        videos_per_task=cfg.videos,
        output_dir=out,
        progress=cfg.progress,
        config=to_dict(cfg),
    )
    print()
    rerank = "" if cfg.rerank == "none" else f", rerank {cfg.rerank} of K = {cfg.candidates}"
    obs = "" if not cfg.env.object_state else f", {observation_label(cfg.env)}"
    print(f"policy {cfg.policy} on {cfg.benchmark} (eval split{rerank}{obs})")
    print(format_table(results))
    t = results["timing"]
    print(f"\n{results['num_episodes']} episodes in {t['wall_s']:.1f} s "
          f"({t['env_steps_per_s']:.0f} env steps/s); results: {out / 'results.json'}")  # fmt: skip
    return 0
