"""A finetune run: the settings every method shares (`RunConfig`) and what every method does the
same way: resolve benchmark, tasks and base (`setup_run`), the eval protocol during and after
training (`eval_point`, `final_results`), the run directory and its results file.

It lives below `vla_rl.methods` (methods import it; it imports no method), so the command that
lists the methods (`vla_rl.commands.finetune`) and the methods themselves form no cycle.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vla_rl.core.benchmark import Benchmark, EnvConfig
from vla_rl.core.config import ConfigError, to_dict
from vla_rl.core.load_options import BaseLoadConfig
from vla_rl.core.policy import BasePolicy
from vla_rl.evaluation.protocol import curve_point, evaluate
from vla_rl.io.atomic import (
    atomic_write_json,
    check_output_location,
    remove_stale_temporaries,
)
from vla_rl.io.provenance import provenance
from vla_rl.runs.checkpoint import find_checkpoint, load_checkpoint
from vla_rl.runs.metrics import MetricsLogger
from vla_rl.runs.plots import plot_learning_curve, plot_per_task_curves


@dataclass
class RunConfig:
    """What every finetune method shares: base, benchmark, tasks, budget, eval protocol, run
    directory, envs. `vla-rl finetune`'s FinetuneConfig adds one field per method."""

    base: str = "metaworld-flow"
    """Base policy: a registered name (e.g. the bundled metaworld-flow), a checkpoint dir, or a
    real VLA family (openvla, openvla-oft, pi0, smolvla) with --base-path."""
    base_path: str | None = None
    """The published checkpoint directory of a real VLA family given as --base (its own on-disk
    format; README "Real VLA bases")."""
    base_load: BaseLoadConfig = field(default_factory=BaseLoadConfig)
    """How a real VLA checkpoint is loaded (unnorm key, dtype, cameras, ...)."""
    method: str = "residual"
    """RL method: residual (ResFiT, a frozen base plus a learned residual), ppo (VLA-RL's
    trajectory-level PPO), grpo (group-relative, SimpleVLA-RL) or srpo (GRPO with SRPO's
    progress reward); the last three update the base's own weights."""
    benchmark: str = "metaworld"
    """A registered benchmark (see `vla-rl benchmarks`)."""
    eval_benchmark: str | None = None
    """Where the run is evaluated. None: on --benchmark, as it trains. A registered benchmark
    (e.g. metaworld): every eval point and the final evaluation (the result and the base) run
    on that benchmark's eval split of the same task names, so a policy trained in a learned
    world model (--benchmark worldmodel) is measured in the real simulator of its tasks; the
    base is then loaded for it (a bundled metaworld-flow works)."""
    tasks: tuple[str, ...] = ("button-press-topdown-v3",)
    """Tasks (or set names) to train and evaluate on. Default: one MT10 task on which the bundled
    base succeeds about half the time (docs/RESULTS.md), so a few minutes show a change."""
    env_steps: int = 10_000
    """Env steps (control steps, summed over parallel envs) of RL; the default fits the README's
    few-minute main job on a 2-core CPU; docs/RESULTS.md states the budget of each result."""
    output_dir: str | None = None
    """Run directory (checkpoint/, policy/, metrics, results.json, plot, videos). None:
    runs/finetune/<method>/<timestamp>."""
    eval_every: int = 5_000
    """Env steps between evaluations on the eval split (plus one before training and one at
    the end)."""
    eval_episodes: int = 20
    """Episodes per task at each periodic evaluation (the first eval initial states, in order)."""
    final_eval_episodes: int | None = None
    """Episodes per task of the final evaluation of the result and of the base beside it.
    None: every eval initial state (Meta-World 50, LIBERO 25 per task)."""
    videos: int = 2
    """Final-evaluation episodes per task saved as MP4 (videos/ in the run directory)."""
    resume: bool = False
    """Continue from output_dir/checkpoint (needs --output-dir)."""
    overwrite: bool = False
    """Replace what an existing --output-dir holds. Without it (and without --resume) a run
    directory that is not empty is refused, so a finished or interrupted run is never lost."""
    seed: int = 0
    """Seeds torch, numpy and the choice of training initial states."""
    logger: str = "tensorboard"
    """Metrics backend beside metrics.jsonl: tensorboard, wandb (offline) or none."""
    progress: bool = True
    """Show a progress bar (env steps/s, ETA, train and eval success)."""
    env: EnvConfig = field(
        default_factory=lambda: EnvConfig(num_envs=4, num_workers=1, video_size=0)
    )
    """Training envs. 4 envs in 1 worker by default: the learner's updates, not the simulator,
    take most of the time (about 31 env steps/s with updates against ~1000 for Meta-World alone
    on this machine), so the main process keeps the second core for them."""


def check_run_config(cfg: RunConfig) -> None:
    for name in ("env_steps", "eval_every", "eval_episodes"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.final_eval_episodes is not None and cfg.final_eval_episodes < 1:
        raise ConfigError(f"--final-eval-episodes must be >= 1, got {cfg.final_eval_episodes}")
    if cfg.videos < 0:
        raise ConfigError(f"--videos must be >= 0, got {cfg.videos}")
    if cfg.resume and cfg.output_dir is None:
        raise ConfigError("--resume needs --output-dir (the run to continue)")


def run_directory(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir or f"runs/finetune/{cfg.method}/{datetime.now():%Y%m%d-%H%M%S}")


def eval_point(
    policy: BasePolicy,
    benchmark: Benchmark,
    cfg: RunConfig,
    tasks: list[str],
    progress_state: dict[str, Any],
) -> dict[str, Any]:
    """One point of the learning curve: the eval protocol on cfg.eval_episodes per task."""
    res = evaluate(
        policy,
        benchmark,
        task_names=tasks,
        episodes_per_task=cfg.eval_episodes,
        env_cfg=cfg.env,
        seed=cfg.seed,
        progress=False,
    )
    return {
        "env_steps": progress_state["env_steps"],
        "updates": progress_state.get("updates", 0),
        "wall_s": round(progress_state["wall_s"], 1),
        **curve_point(res),
    }


def final_results(
    policy: BasePolicy,
    base: BasePolicy,
    benchmark: Benchmark,
    cfg: RunConfig,
    tasks: list[str],
    run: Path,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate the result and the base with the same protocol; write run/results.json in the
    eval format (per-task table of the result) with the base's results beside it."""
    common = dict(task_names=tasks, episodes_per_task=cfg.final_eval_episodes, env_cfg=cfg.env,
                  seed=cfg.seed, progress=cfg.progress)  # fmt: skip
    results = evaluate(policy, benchmark, videos_per_task=cfg.videos, output_dir=run / "eval",
                       **common)  # type: ignore[arg-type]  # fmt: skip
    base_results = evaluate(base, benchmark, **common)  # type: ignore[arg-type]
    keys = ("success_rate", "success_ci95", "successes", "num_episodes", "per_task",
            "success_definitions", "episodes", "protocol")  # fmt: skip
    results["base"] = {k: base_results[k] for k in keys}
    results["improvement"] = round(results["success_rate"] - base_results["success_rate"], 4)
    results.update(extra)
    results["config"] = to_dict(cfg)
    results["provenance"] = provenance()
    atomic_write_json(run / "results.json", results)
    return results


def load_state(run: Path) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
    """(checkpoint directory, tree, state) of the run's checkpoint, or None when it has none.
    An unreadable or old-format (pickled) checkpoint raises CheckpointError, a ValueError: the
    CLI prints its one line and exits 2."""
    directory = find_checkpoint(run / "checkpoint")
    if directory is None:
        return None
    tree, state = load_checkpoint(directory)
    return directory, tree, state


@dataclass
class RunSetup:
    """What every method builds first, the same way: benchmark, task names and train split, the
    base policy, the run directory, (with --resume) the loaded checkpoint, and the benchmark the
    run is evaluated on."""

    benchmark: Benchmark
    names: list[str]
    train_tasks: list
    base: BasePolicy
    run: Path
    saved: dict[str, Any] | None
    """With --resume: the checkpoint's state.json (counters, curve, numpy RNG state)."""
    saved_tree: dict[str, Any] | None = None
    """With --resume: the checkpoint's tensor tree (learner state dicts, torch RNG state), as
    `vla_rl.runs.checkpoint.save_checkpoint` was given it."""
    checkpoint: Path | None = None
    """With --resume: the checkpoint directory read (its extra files: policy/, buffers)."""
    overwrite: bool = False
    """--overwrite: `claim` empties the run directory first."""
    eval_benchmark: Benchmark | None = None
    """Where eval points and the final evaluation run (--eval-benchmark); left None, it is
    `benchmark`."""

    def __post_init__(self) -> None:
        if self.eval_benchmark is None:
            self.eval_benchmark = self.benchmark

    def claim(self) -> None:
        """Take the run directory for writing (see `claim_run_directory`); the loops call it
        right before their first write, after every check has passed."""
        claim_run_directory(self.run, self.overwrite)


def setup_run(cfg: RunConfig) -> RunSetup:
    """Resolve the benchmark, tasks and base, and find the checkpoint to resume; writes nothing."""
    from vla_rl.core.benchmark import apply_policy_observation, get_benchmark
    from vla_rl.core.policy import load_policy

    benchmark = get_benchmark(cfg.benchmark, env=cfg.env)
    names = benchmark.resolve_task_names(list(cfg.tasks) or None)
    evaluated = benchmark
    if cfg.eval_benchmark is not None:
        # the same env settings: a real benchmark ignores the world-model fields
        evaluated = get_benchmark(cfg.eval_benchmark, env=cfg.env)
        check_eval_tasks(benchmark, evaluated, names)
    # The base is loaded for where it is measured: a policy bundled for Meta-World (it checks
    # the benchmark's name) then trains in a world model of Meta-World tasks.
    base = load_policy(cfg.base, evaluated, cfg.base_path, cfg.base_load)
    cfg.env = apply_policy_observation(evaluated, cfg.env, base)
    if evaluated is not benchmark:  # after the line above: object state may change Ds
        check_same_spaces(benchmark, evaluated)
    run = run_directory(cfg)
    loaded = load_state(run) if cfg.resume else None
    if cfg.resume and loaded is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {run / 'checkpoint'}")
    directory, tree, saved = loaded if loaded is not None else (None, None, None)
    if saved is not None:
        check_same_training(saved.pop("identity", None), training_identity(cfg), directory)
    check_run_directory(run, cfg.resume, cfg.overwrite)
    train_tasks = benchmark.tasks("train", names)
    return RunSetup(benchmark, names, train_tasks, base, run, saved, tree, directory,
                    overwrite=cfg.overwrite, eval_benchmark=evaluated)  # fmt: skip


def check_eval_tasks(trained: Benchmark, evaluated: Benchmark, names: list[str]) -> None:
    """ConfigError unless every trained task is a task of the eval benchmark, by name."""
    valid = evaluated.task_names()
    missing = [n for n in names if n not in valid]
    if missing:
        shown = valid if len(valid) <= 20 else valid[:20] + [f"... ({len(valid)} tasks)"]
        raise ConfigError(
            f"--eval-benchmark {evaluated.name}: task {missing[0]!r} of --benchmark "
            f"{trained.name} is not one of its tasks; valid tasks: {', '.join(shown)}"
        )


def check_same_spaces(trained: Benchmark, evaluated: Benchmark) -> None:
    """ConfigError unless the policy trained on one benchmark can act in the other (Da, Ds)."""
    for what, dim in (("action", "action_dim"), ("state", "state_dim")):
        a, b = getattr(trained, dim), getattr(evaluated, dim)
        if a != b:
            raise ConfigError(
                f"--benchmark {trained.name} has {a}-D {what}s, --eval-benchmark "
                f"{evaluated.name} {b}-D: a policy trained in one cannot act in the other"
            )


# Settings a resumed run may change: the budget, the bookkeeping, the eval protocol during
# training, and the settings that only decide how fast (worker processes; rollouts and the
# local pool give the same results for any of them, tests/test_rollout.py).
RESUMABLE = {"env_steps", "output_dir", "resume", "overwrite", "progress", "logger", "eval_every",
             "eval_episodes", "final_eval_episodes", "videos", "save_every", "num_workers",
             "main_envs", "pipeline_groups", "rollout_workers", "backend", "ray_address",
             "ray_max_restarts", "ray_worker_cpus"}  # fmt: skip


def training_identity(cfg: RunConfig) -> dict[str, Any]:
    """The settings that decide what a run trains, flattened to "a.b" keys: the run's fields and
    its own method's (a command's config holds every method's; the others do not count), less
    RESUMABLE. Stored in each checkpoint and compared on --resume."""
    shared = {f.name for f in dataclasses.fields(RunConfig)}
    method_field = cfg.method.replace("-", "_")
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, f"{key}.{name}" if key else name)
        elif key.rpartition(".")[2] not in RESUMABLE:
            flat[key] = list(value) if isinstance(value, tuple) else value

    for name, value in to_dict(cfg).items():
        if name in shared or name == method_field:
            walk(value, name)
    return flat


def check_same_training(saved: dict[str, Any] | None, now: dict[str, Any], where: Path) -> None:
    """One line naming what a resumed run would change about the training in the checkpoint."""
    if saved is None:
        return  # written before checkpoints carried their settings
    # A setting the checkpoint does not name was added to the toolkit after it was written: its
    # default is the behaviour the run trained with (new settings default to the old behaviour),
    # so only what the checkpoint names is compared.
    differ = sorted(saved, key=str)
    differ = [k for k in differ if saved.get(k) != now.get(k)]
    if differ:
        shown = "; ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} -> {now.get(k)!r}"
                          for k in differ[:3])  # fmt: skip
        more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
        raise ConfigError(
            f"--resume: the checkpoint in {where} trained with other settings: {shown}{more}; "
            "resume with the run's own settings, or start a new run"
        )


def check_run_directory(run: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a run directory that is a file, cannot be written, or already holds something
    when neither --resume nor --overwrite says what to do with it. Writes nothing."""
    check_output_location(run, directory=True, flag="--output-dir")
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --output-dir; --overwrite replaces it: "
                          "give one")  # fmt: skip
    if run.is_dir() and not resume and not overwrite:
        held = sorted(p.name for p in run.iterdir() if not p.name.startswith("."))
        if held:
            raise FileExistsError(
                f"--output-dir {run} already holds a run ({', '.join(held[:4])}"
                f"{', ...' if len(held) > 4 else ''}); pass --resume to continue it or "
                "--overwrite to replace it"
            )


LOCK_FILE = ".lock"  # in a run directory: the pid of the process writing it


def claim_run_directory(run: Path, overwrite: bool) -> None:
    """Called once a run has passed every check, before its first write. A run directory another
    live process is writing (its .lock names a running pid) is refused, so two runs never write
    one directory; then, with --overwrite, the old contents go; otherwise what killed writers
    left behind (stale .tmp directories) does; last, this process's pid goes into .lock, removed
    again when the process exits (a killed run's lock names a dead pid and is taken over)."""
    owner = lock_owner(run)
    if owner is not None and owner != os.getpid():
        raise FileExistsError(
            f"--output-dir {run} is being written by process {owner} (its {LOCK_FILE}); wait "
            "for that run to end or stop it, or choose another --output-dir"
        )
    if overwrite and run.is_dir():
        shutil.rmtree(run)
    remove_stale_temporaries(run)
    run.mkdir(parents=True, exist_ok=True)
    (run / LOCK_FILE).write_text(f"{os.getpid()}\n")
    atexit.register(release_run_directory, run)


def lock_owner(run: Path) -> int | None:
    """The live process that holds `run`'s lock, or None (no lock, or its process is gone)."""
    try:
        pid = int((run / LOCK_FILE).read_text().strip())
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (OSError, ValueError):
        return None
    return pid


def release_run_directory(run: Path) -> None:
    """Remove `run`'s lock if this process holds it."""
    if lock_owner(run) == os.getpid():
        (run / LOCK_FILE).unlink(missing_ok=True)


# ---- the parts of a training loop every method writes the same way ---------------------------
def training_bar(
    cfg: RunConfig, run: Path, state: dict[str, Any], desc: str, smoothing: float, checkpoints: str
) -> tqdm:
    """The progress bar over env steps (rate and ETA); sparse updates when stderr is a file.
    checkpoints: how often the loop checkpoints, said once first, so the user knows what a kill
    can cost ("every 1 RL step"). run: the run's directory (`RunSetup.run`; a second
    `run_directory` call would time-stamp a different one when --output-dir is not given)."""
    if cfg.progress:
        print(f"checkpoint {checkpoints} to {run / 'checkpoint'} (--resume); a "
              "kill loses at most the work since the last one", file=sys.stderr)  # fmt: skip
    return tqdm(total=cfg.env_steps, initial=state["env_steps"], unit="step", smoothing=smoothing,
                desc=desc[:60], disable=not cfg.progress,
                mininterval=0.5 if sys.stderr.isatty() else 10.0)  # fmt: skip


class EvalSchedule:
    """Learning-curve points at every multiple of cfg.eval_every env steps (the first step
    past it: chunks and episodes overshoot) and at the end; a resumed run keeps the grid."""

    def __init__(self, eval_every: int, env_steps: int):
        self.every = eval_every
        self.last = env_steps - env_steps % eval_every

    def due(self, env_steps: int, done: bool) -> bool:
        if env_steps - self.last >= self.every or done:
            self.last = env_steps - env_steps % self.every
            return True
        return False


def record_eval_point(
    policy: BasePolicy,
    setup: RunSetup,
    cfg: RunConfig,
    state: dict[str, Any],
    logger: MetricsLogger,
    **fields: Any,
) -> None:
    """Evaluate now (`eval_point`, the policy in eval mode), append the point with `fields` to
    state["curve"] and log it."""
    was_training = policy.training
    policy.eval()
    point = eval_point(policy, setup.eval_benchmark, cfg, setup.names, state)
    policy.train(was_training)
    point.update(fields)
    state["curve"].append(point)
    per_task = {f"eval_task/{t}": v for t, v in point["per_task"].items()}
    logger.log(state["env_steps"], {"eval/success_rate": point["success_rate"],
                                    **(per_task if len(per_task) > 1 else {})})  # fmt: skip


def finish_run(
    policy: BasePolicy,
    setup: RunSetup,
    cfg: RunConfig,
    state: dict[str, Any],
    title: str,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The end of every method: the result in run/policy, the learning curve as a plot, and
    `final_results` (the result and the base on the whole eval split) with `extra` and the
    curve."""
    run = setup.run
    policy.eval()
    policy.save_pretrained(run / "policy")
    plot_learning_curve(state["curve"], run / "learning_curve.png",
                        x_keys=("env_steps", "wall_s"), title=title)  # fmt: skip
    if len(setup.names) > 1:  # a multi-task run: which tasks learned
        plot_per_task_curves(state["curve"], run / "learning_curve_per_task.png", title)
    extra = {"policy_dir": str(run / "policy"), **extra, "curve": state["curve"]}
    return final_results(policy, setup.base, setup.eval_benchmark, cfg, setup.names, run, extra)
