"""`vla-rl`: the command line. One subcommand per job; each parses its own config dataclass.

Errors a user can cause (an unknown name, a missing file, a bad value) print one clear line that
names the valid choices and exit with status 2, before anything is written. VLA_RL_DEBUG=1 shows
the full traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from vla_rl.config import ConfigError, parse_cli, to_dict
from vla_rl.evaluation import format_table
from vla_rl.registry import UnknownNameError

USAGE_EXIT = 2


def cmd_eval(args: list[str]) -> int:
    from vla_rl.benchmark import get_benchmark
    from vla_rl.evaluation import EvalConfig, evaluate
    from vla_rl.policy import load_policy
    from vla_rl.rerank import rerank_policy

    cfg = parse_cli(EvalConfig, args, prog="vla-rl eval", description=EvalConfig.__doc__ or "")
    if cfg.episodes is not None and cfg.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {cfg.episodes}")
    if cfg.videos < 0:
        raise ConfigError(f"--videos must be >= 0, got {cfg.videos}")
    benchmark = get_benchmark(cfg.benchmark)
    # Validate every name before any env starts or any file is written.
    benchmark.resolve_task_names(list(cfg.tasks) or None)
    policy = load_policy(cfg.policy, benchmark, cfg.base_path, cfg.base_load)
    policy = rerank_policy(policy, cfg.policy, cfg.rerank, cfg.candidates, cfg.noise, cfg.verifier)
    out = Path(cfg.output_dir or f"runs/eval/{cfg.benchmark}/{datetime.now():%Y%m%d-%H%M%S}")
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
    print(f"policy {cfg.policy} on {cfg.benchmark} (eval split{rerank})")
    print(format_table(results))
    t = results["timing"]
    print(f"\n{results['num_episodes']} episodes in {t['wall_s']:.1f} s "
          f"({t['env_steps_per_s']:.0f} env steps/s); results: {out / 'results.json'}")  # fmt: skip
    return 0


@dataclass
class BenchmarksConfig:
    """`vla-rl benchmarks`: list benchmarks, their task sets and tasks."""

    name: str | None = None
    """Show only this benchmark (all tasks with their instructions)."""


def cmd_benchmarks(args: list[str]) -> int:
    from vla_rl.registry import BENCHMARKS, POLICIES

    cfg = parse_cli(BenchmarksConfig, args, prog="vla-rl benchmarks")
    names = [cfg.name] if cfg.name else BENCHMARKS.names()
    for name in names:
        BENCHMARKS._check(name)
    for name in names:
        print(f"{name}: {BENCHMARKS.description(name)}")
        try:
            bench = BENCHMARKS.get(name)()
        except ImportError as err:
            print(f"    not installed ({err}); `vla-rl doctor` says how to install it")
            continue
        for set_name, members in bench.task_sets().items():
            print(f"    set {set_name}: {len(members)} tasks")
        tasks = bench.tasks("eval")
        n_train = len(bench.tasks("train", [tasks[0].name])[0].init_ids)
        print(f"    {len(tasks)} tasks; per task {n_train} train / {len(tasks[0].init_ids)} eval "
              f"initial states; horizon {tasks[0].max_steps} env steps")  # fmt: skip
        for task in tasks if cfg.name else tasks[:3]:
            print(f"      {task.name}: {task.instruction!r}")
        if not cfg.name and len(tasks) > 3:
            print(f"      ... (`vla-rl benchmarks --name {name}` lists all {len(tasks)})")
    if not cfg.name:
        print("\npolicies: " + ", ".join(POLICIES.names()) + ", or a checkpoint directory")
    return 0


def cmd_collect(args: list[str]) -> int:
    from vla_rl.collect import CollectConfig, collect, print_summary

    cfg = parse_cli(CollectConfig, args, prog="vla-rl collect", description=CollectConfig.__doc__)
    print_summary(cfg, collect(cfg))
    return 0


def cmd_pretrain(args: list[str]) -> int:
    from vla_rl.pretrain import PretrainConfig, pretrain

    cfg = parse_cli(
        PretrainConfig, args, prog="vla-rl pretrain", description=PretrainConfig.__doc__
    )
    res = pretrain(cfg)
    final = res["final_eval"]
    lo, hi = final["ci95"]
    print(
        f"\n{res['demonstrations']} demos, {res['steps']} steps in {res['train_wall_s']:.0f} s; "
        f"eval success {final['success_rate']:.3f} [{lo:.3f}, {hi:.3f}]; "
        f"policy: {res['policy_dir']} (plot: {Path(cfg.output_dir) / 'learning_curve.png'})"
    )
    return 0


def cmd_finetune(args: list[str]) -> int:
    from vla_rl.finetune import FinetuneConfig, finetune

    cfg = parse_cli(
        FinetuneConfig, args, prog="vla-rl finetune", description=FinetuneConfig.__doc__
    )
    res = finetune(cfg)
    base = res["base"]
    print()
    print(f"{cfg.method} on base {cfg.base}, {cfg.benchmark} eval split")
    print(format_table(res))
    (lo, hi), (blo, bhi) = res["success_ci95"], base["success_ci95"]
    print(
        f"\nbase {base['success_rate']:.3f} [{blo:.3f}, {bhi:.3f}] -> finetuned "
        f"{res['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] after {res['env_steps']} env steps "
        f"({res['train_wall_s']:.0f} s of training)"
    )
    run = Path(res["policy_dir"]).parent
    print(f"results: {run / 'results.json'}; plot: {run / 'learning_curve.png'}; "
          f"policy: {res['policy_dir']} (vla-rl eval --policy {res['policy_dir']})")  # fmt: skip
    return 0


def cmd_fit_verifier(args: list[str]) -> int:
    from vla_rl.fit_verifier import FitVerifierConfig, fit_verifier

    cfg = parse_cli(
        FitVerifierConfig, args, prog="vla-rl fit-verifier", description=FitVerifierConfig.__doc__
    )
    res = fit_verifier(cfg)
    check = res["selection_on_train_frames"]
    print(
        f"\nverifier for {cfg.policy}: {res['samples']} frames, {res['feature_dim']}-D features, "
        f"loss {res['losses'][0]:.3f} -> {res['losses'][-1]:.3f}; on the training frames its "
        f"pick among K = {cfg.candidates} is the one closest to the demonstration "
        f"{check['pick_is_closest']:.2f} of the time (chance {check['chance']:.2f})\n"
        f"saved to {res['output_dir']} (vla-rl eval --policy {cfg.policy} --rerank taco "
        f"--verifier {res['output_dir']})"
    )
    return 0


def cmd_doctor(args: list[str]) -> int:
    from vla_rl.doctor import DoctorConfig, run_doctor

    cfg = parse_cli(DoctorConfig, args, prog="vla-rl doctor", description=DoctorConfig.__doc__)
    return run_doctor(cfg)


def cmd_bench(args: list[str]) -> int:
    from vla_rl.throughput import BenchConfig, run_rollout_bench

    cfg = parse_cli(BenchConfig, args, prog="vla-rl bench", description=BenchConfig.__doc__)
    return run_rollout_bench(cfg)


def cmd_bench_policy(args: list[str]) -> int:
    from vla_rl.policy_bench import PolicyBenchConfig, run_policy_bench

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


def cmd_tiny_checkpoint(args: list[str]) -> int:
    from vla_rl.tiny_checkpoints import TinyCheckpointConfig, write_tiny_checkpoint

    cfg = parse_cli(TinyCheckpointConfig, args, prog="vla-rl tiny-checkpoint",
                    description=TinyCheckpointConfig.__doc__ or "")  # fmt: skip
    out = write_tiny_checkpoint(cfg)
    print(f"wrote a tiny {cfg.family} checkpoint to {out}; load it with "
          f"--base {cfg.family} --base-path {out}")  # fmt: skip
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "finetune": (cmd_finetune, "post-train a base policy with RL (--method residual)"),
    "eval": (cmd_eval, "evaluate a policy on a benchmark's eval split"),
    "collect": (cmd_collect, "roll out a policy on the train split; save a LeRobot v3 dataset"),
    "pretrain": (cmd_pretrain, "behaviour-clone a policy family on a demonstration dataset"),
    "fit-verifier": (
        cmd_fit_verifier,
        "fit TACO's pseudo-count verifier (eval --rerank taco) on a policy's training data",
    ),
    "benchmarks": (cmd_benchmarks, "list benchmarks, task sets, tasks and policies"),
    "doctor": (cmd_doctor, "check the installation and say how to fix what is missing"),
    "bench": (cmd_bench, "measure rollout throughput (engine vs raw simulator vs sequential)"),
    "bench-policy": (
        cmd_bench_policy,
        "a policy's chunk latency and engine-vs-sequential eval speed",
    ),
    "tiny-checkpoint": (
        cmd_tiny_checkpoint,
        "write a tiny random-weight openvla/openvla-oft/pi0/smolvla checkpoint in its real format",
    ),
}


def usage() -> str:
    lines = ["usage: vla-rl <command> [options]   (vla-rl <command> --help for its options)", ""]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else USAGE_EXIT
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"vla-rl: unknown command {command!r}; valid choices: {', '.join(COMMANDS)}",
              file=sys.stderr)  # fmt: skip
        return USAGE_EXIT
    try:
        return COMMANDS[command][0](rest)
    except (UnknownNameError, ConfigError, FileNotFoundError, FileExistsError, ValueError) as err:
        if os.environ.get("VLA_RL_DEBUG"):  # the full traceback, for bug reports
            raise
        print(f"vla-rl {command}: error: {err}", file=sys.stderr)
        return USAGE_EXIT


if __name__ == "__main__":
    sys.exit(main())
