"""The Benchmark interface: tasks with disjoint train/eval initial states, and env factories."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from vla_rl.core.config import ConfigError, register_check
from vla_rl.core.registry import BACKENDS, UnknownNameError
from vla_rl.core.slots import SlotEnv
from vla_rl.core.types import EpisodeSpec, TaskSpec

__all__ = ["Benchmark", "EnvConfig", "EpisodeSpec", "TaskSpec", "SPLITS"]  # specs live in types

SPLITS = ("train", "eval")


@dataclass
class EnvConfig:
    """How the environments are built and run (shared by every benchmark)."""

    num_envs: int = 8
    """B: parallel env slots. Default 8: enough envs per worker to amortise inter-process
    messages on a 2-core machine (measured in docs/RESULTS.md)."""
    num_workers: int = 2
    """Worker processes hosting the B envs (0 = step them in the main process). Default 2 = the
    cores of the reference machine; more processes than cores gave no gain there."""
    main_envs: int = 0
    """Slots stepped by the main process itself, in parallel with the workers. 0 by default; on
    a machine where the main process has a core to spare (see docs/RESULTS.md) it replaces a
    worker's wake-up latency with useful work."""
    pipeline_groups: int = 2
    """G: slot groups the rollout engine alternates between, so env stepping overlaps policy
    inference and message latency (see RolloutEngine). 1 = one inference batch of all B."""
    images: bool = False
    """Render camera images into observations (slow on CPU; state-only by default)."""
    image_size: int = 128
    """H = W of rendered camera images. 128 is LIBERO's standard size (LIBERO datasets, OpenVLA)."""
    fast_render: bool = True
    """Turn off shadows, reflections and multisampling: 2-10x faster CPU rendering (measured in
    ../shared/reference/simulators.md) at a small visual cost."""
    max_steps: int | None = None
    """Override the benchmark's episode horizon (env steps); None keeps the benchmark's default."""
    video_size: int = 256
    """H = W of frames rendered for evaluation videos; 0 renders none (LIBERO then builds no
    offscreen renderer when images are off, which makes env creation faster)."""
    step_timeout_s: float = 600.0
    """Seconds an env worker may take to answer one request (a chunk of every slot it hosts)
    before it counts as hung: it is then killed and replaced, and its slots' episodes run again.
    Far above a chunk's time here: the slowest measured setting, LIBERO with two 128 px cameras
    at 17.7 env steps/s for 4 envs (docs/RESULTS.md), takes about 2 s for 8 steps of 4 envs."""
    object_state: bool = False
    """LIBERO only, non-standard: the state becomes the 8-D proprio plus the poses of the task's
    objects of interest read from the simulator (privileged; benchmarks/libero_scene.py), so
    that RL on LIBERO fits a CPU without images. Results with it are labelled
    "object-state (privileged, non-standard)" and are not comparable with the standard image
    protocol's.
    A policy trained on it turns it on by itself (`apply_policy_observation`)."""
    world_model: str | None = None
    """--benchmark worldmodel only: the world model to run, a directory written by `vla-rl
    world-model train` (its run directory or the model/ inside). Its tasks, train / eval starts
    and reflector come from there (world_models/env.py)."""
    world_model_reward: str = "sparse"
    """--benchmark worldmodel only: the env reward the reflector gives per env step: sparse
    (1 at its success), relative (the change of its success probability, RLinf's
    use_rel_reward) or progress (its progress estimate, a potential). Termination is its
    success in every mode, so the methods' default `success` reward is unaffected."""
    backend: str = "local"
    """Where the per-slot envs run (the BACKENDS registry): local = worker processes on this
    machine (vla_rl/rollout/local.py); ray = Ray actors, on this machine or a Ray cluster
    (vla_rl/rollout/ray_backend.py, the [ray] extra). A benchmark that steps all its slots itself
    (a batched world model) ignores it."""
    ray_address: str | None = None
    """backend ray: the Ray cluster whose nodes host the env workers: "auto" joins the cluster
    `ray start` started on this machine, HOST:PORT the one whose head listens there. None starts
    a Ray of this process's own on this machine (with the machine's CPUs, and at least what the
    workers ask for). Unused when Ray is already initialised in this process."""
    ray_max_restarts: int = 3
    """backend ray: times one env worker may be lost (it died, hung past step_timeout_s, or its
    env raised) and restarted by Ray with fresh envs before the run ends with WorkerError. 3 =
    the local backend's limit per worker process (ChunkedVectorEnv.max_restarts)."""
    ray_worker_cpus: float = 1.0
    """backend ray: CPUs Ray reserves for each env worker actor. 1 = one simulator per core, as
    the local backend's processes; a fraction packs several workers onto a core (tests on a
    2-core machine, envs that mostly wait on a GPU renderer)."""


def check_env_config(cfg: EnvConfig, flag: str = "env") -> None:
    """Raise ConfigError for env settings nothing can run with. parse_cli runs it on every
    EnvConfig of every command's config, before any env is built (a 0 here used to hang)."""
    at = f"--{flag}." if flag else "--"
    for name, low in (("num_envs", 1), ("num_workers", 0), ("pipeline_groups", 1),
                      ("video_size", 0)):  # fmt: skip
        if getattr(cfg, name) < low:
            raise ConfigError(
                f"{at}{name.replace('_', '-')} must be >= {low}, got {getattr(cfg, name)}"
            )
    if not 0 <= cfg.main_envs <= cfg.num_envs:
        raise ConfigError(
            f"{at}main-envs must be in 0..{at}num-envs ({cfg.num_envs}), got {cfg.main_envs}"
        )
    if cfg.images and cfg.image_size < 1:
        raise ConfigError(f"{at}image-size must be >= 1 with {at}images, got {cfg.image_size}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ConfigError(f"{at}max-steps must be >= 1 (or None), got {cfg.max_steps}")
    if cfg.step_timeout_s <= 0:
        raise ConfigError(f"{at}step-timeout-s must be > 0, got {cfg.step_timeout_s}")
    if cfg.ray_max_restarts < 0:
        raise ConfigError(f"{at}ray-max-restarts must be >= 0, got {cfg.ray_max_restarts}")
    if cfg.ray_worker_cpus <= 0:
        raise ConfigError(f"{at}ray-worker-cpus must be > 0, got {cfg.ray_worker_cpus}")


register_check(EnvConfig, check_env_config)


class Benchmark(ABC):
    """A set of tasks, each with disjoint train and eval initial states, and an env factory."""

    name: str = "benchmark"
    action_dim: int = 0  # Da
    state_dim: int = 0  # Ds
    fps: int = 0  # control steps per second of simulated time (dataset timestamps, videos)
    camera_names: tuple[str, ...] = ()  # the Ncam cameras of obs["image"], in order
    object_state_dim: int = 0  # Ds with EnvConfig.object_state; 0: the benchmark has no such view
    packages: tuple[str, ...] = ()  # distributions whose versions fix its tasks and physics

    def use_env_config(self, cfg: EnvConfig) -> None:
        """Adapt what depends on the env settings (Ds with --env.object-state); ConfigError for
        settings this benchmark cannot honour. get_benchmark(name, env=cfg) calls it."""
        if cfg.object_state:
            if not self.object_state_dim:
                raise ConfigError(
                    f"--env.object-state applies to the LIBERO suites, not {self.name!r} "
                    "(its state is already the simulator's)"
                )
            self.state_dim = self.object_state_dim

    @property
    def noop_action(self) -> list[float]:
        """The action (Da,) that leaves the scene as it is: zeros, unless a benchmark says
        otherwise (LIBERO keeps its gripper open with -1)."""
        return [0.0] * self.action_dim

    @abstractmethod
    def task_names(self) -> list[str]:
        """Every task of the benchmark, in its canonical order."""

    @abstractmethod
    def tasks(self, split: str, names: Sequence[str] | None = None) -> list[TaskSpec]:
        """TaskSpecs of `split` ("train" or "eval"), for `names` or all tasks."""

    def task_sets(self) -> dict[str, list[str]]:
        """Named groups of tasks (e.g. "MT10"), usable wherever task names are."""
        return {}

    @abstractmethod
    def env_factory(self, cfg: EnvConfig) -> Callable[[], gym.Env]:
        """A picklable zero-argument callable that builds one env slot in a worker process.

        The env resets into any task of this benchmark: `reset(options={"task": TaskSpec,
        "init_id": int})`, and returns dict observations with "state" (Ds,) float32 and, when
        `cfg.images`, "image" (Ncam, H, W, 3) uint8; `info["success"]` on every step.
        """

    def make_env(self, tasks: Sequence[TaskSpec], cfg: EnvConfig | None = None) -> SlotEnv:
        """B = cfg.num_envs env slots able to run any of `tasks` (a `SlotEnv`), hosted by the
        backend cfg.backend names (local: cfg.num_workers worker processes).

        Every slot can reset into any task of the benchmark (the engine refills slots with
        whatever episode comes next), so `tasks` only has to belong to this benchmark. A
        benchmark that steps its slots itself (a batched world model) overrides this and returns
        its own SlotEnv.
        """
        foreign = sorted({t.benchmark for t in tasks} - {self.name})
        if foreign:
            raise ValueError(f"tasks of {foreign} cannot run on benchmark {self.name!r}")
        cfg = cfg or EnvConfig()
        return BACKENDS.get(cfg.backend)(self.env_factory(cfg), cfg)

    # ---- helpers shared by all benchmarks -----------------------------------------------------
    def resolve_task_names(self, selectors: Sequence[str] | None) -> list[str]:
        """Expand task names and set names (e.g. "MT10") into task names, in order, no repeats."""
        if not selectors:
            return self.task_names()
        valid = self.task_names()
        sets = self.task_sets()
        out: list[str] = []
        for sel in selectors:
            if sel in sets:
                expanded = sets[sel]
            elif sel in valid:
                expanded = [sel]
            else:
                shown = valid if len(valid) <= 20 else valid[:20] + [f"... ({len(valid)} tasks)"]
                raise UnknownNameError(
                    f"unknown task {sel!r} for benchmark {self.name!r}; valid task sets: "
                    f"{', '.join(sets) or '(none)'}; valid tasks: {', '.join(shown)} "
                    "(`vla-rl benchmarks` lists them all)"
                )
            out.extend(name for name in expanded if name not in out)
        return out


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise UnknownNameError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
    return split


def check_disjoint(train: Sequence[TaskSpec], eval_: Sequence[TaskSpec]) -> None:
    """Raise if any task's train and eval initial states overlap."""
    eval_ids = {(t.name, i) for t in eval_ for i in t.init_ids}
    overlap = [(t.name, i) for t in train for i in t.init_ids if (t.name, i) in eval_ids]
    if overlap:
        raise AssertionError(f"train and eval initial states overlap: {overlap[:5]}")


def first_episodes(tasks: Sequence[TaskSpec], episodes_per_task: int) -> list[EpisodeSpec]:
    """The first `episodes_per_task` init states of each task, in order: the fixed eval protocol
    on eval tasks, and the fixed demonstration set on train tasks."""
    out = []
    for task in tasks:
        if episodes_per_task > len(task.init_ids):
            raise ValueError(
                f"task {task.name!r} has {len(task.init_ids)} {task.split} initial states; "
                f"asked for {episodes_per_task} episodes (valid: 1..{len(task.init_ids)})"
            )
        out.extend(EpisodeSpec(task, i) for i in task.init_ids[:episodes_per_task])
    return out


def group_episodes(
    tasks: Sequence[TaskSpec], states_per_task: int, group_size: int, rng: np.random.Generator
) -> list[EpisodeSpec]:
    """K = `group_size` rollouts from each of `states_per_task` random initial states per task;
    episodes from the same initial state share a group id (the unit of GRPO advantages)."""
    for task in tasks:  # before any draw; numpy's own error names no setting
        if states_per_task > len(task.init_ids):
            raise ConfigError(
                f"task {task.name!r} has {len(task.init_ids)} {task.split} initial states; "
                f"asked for {states_per_task} groups of {group_size} from distinct ones "
                f"(valid: 1..{len(task.init_ids)})"
            )
    out, group = [], 0
    for task in tasks:
        ids = rng.choice(len(task.init_ids), size=states_per_task, replace=False)
        for i in ids:
            out.extend(EpisodeSpec(task, task.init_ids[int(i)], group) for _ in range(group_size))
            group += 1
    return out


def random_episode(tasks: Sequence[TaskSpec], rng: np.random.Generator) -> EpisodeSpec:
    """One training episode drawn uniformly: a task, then one of its initial states (two
    `rng.integers` draws in that order; the residual and on-policy loops depend on the order for
    runs that repeat exactly under the same seed)."""
    task = tasks[int(rng.integers(len(tasks)))]
    return EpisodeSpec(task, int(task.init_ids[int(rng.integers(len(task.init_ids)))]))


def get_benchmark(name: str, env: EnvConfig | None = None, **kwargs: Any) -> Benchmark:
    """The registered benchmark `name`, adapted to the env settings `env` (use_env_config)."""
    from vla_rl.core.registry import BENCHMARKS

    benchmark = BENCHMARKS.get(name)(**kwargs)
    if env is not None:
        benchmark.use_env_config(env)
    return benchmark


def observation_label(cfg: EnvConfig) -> str:
    """What a results file says its observations were: tables never mix the two."""
    return "object-state (privileged, non-standard)" if cfg.object_state else "standard"


def policy_state_dim(policy: Any) -> int | None:
    """Ds a policy (or the base inside a wrapper) was built for, when its config says."""
    for p in (policy, getattr(policy, "base", None)):
        if p is None:
            continue
        dim = getattr(p, "state_dim", None)
        if not isinstance(dim, int) and hasattr(p, "get_config"):
            dim = p.get_config().get("state_dim")
        if isinstance(dim, int):
            return dim
    return None


def apply_policy_observation(benchmark: Benchmark, cfg: EnvConfig, policy: Any) -> EnvConfig:
    """The env settings a policy needs: a policy built for the benchmark's object state turns
    --env.object-state on (with a note), so a user need not know the flag; a policy built for
    the standard state under --env.object-state is a one-line ConfigError."""
    import dataclasses

    want = policy_state_dim(policy)
    if not benchmark.object_state_dim or want is None:
        return cfg
    if not cfg.object_state and want == benchmark.object_state_dim:
        print(f"note: the policy reads the {want}-D object state: --env.object-state turned on")
        cfg = dataclasses.replace(cfg, object_state=True)
        benchmark.use_env_config(cfg)
    elif cfg.object_state and want != benchmark.object_state_dim:
        raise ConfigError(
            f"--env.object-state gives a {benchmark.object_state_dim}-D state; the policy reads "
            f"{want}-D (the standard state): drop --env.object-state"
        )
    return cfg
