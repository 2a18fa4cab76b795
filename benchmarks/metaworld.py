"""Meta-World 3.x: the embedded default benchmark (runs anywhere, ships scripted experts).

Observations: the 39-D *goal-observable* state (hand pos 3, gripper 1, two objects' pos+quat 14,
the previous frame's 18, goal pos 3). Meta-World's MT benchmarks hide the goal and append a
one-hot task id instead; we keep the goal visible because a single-task policy cannot solve reach
or push without it and the shipped experts read it. Images (on request): the "corner" camera.

Initial states: Meta-World samples each episode's object and goal positions ("rand_vec") inside
`reset`, with rejection sampling (reach and others resample until objects are far enough apart).
We seed the env's own generator with the episode's init id right before `reset`, so an init id
always gives the same state whatever ran before, and the env's own rejection logic is kept.
Train init ids are seeds [train_seed_offset, +num_train_states), eval ids are
[eval_seed_offset, +num_eval_states): disjoint by construction, and a test checks the sampled
states themselves differ.

Horizon: 500 env steps, Meta-World's own `max_path_length` (metaworld/sawyer_xyz_env.py).
"""

from __future__ import annotations

import pickle
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from vla_rl.benchmarks.rendering import ensure_headless_gl
from vla_rl.core.benchmark import Benchmark, EnvConfig, TaskSpec, check_split

ensure_headless_gl()  # before mujoco is imported

MAX_PATH_LENGTH = 500  # metaworld.sawyer_xyz_env.SawyerXYZEnv.max_path_length
STATE_DIM = 39
ACTION_DIM = 4  # xyz end-effector delta + gripper effort, all in [-1, 1]
CAMERA = "corner"
MAX_RENDERERS = 24
"""Renderers a process keeps, one per (task, size, fast_render), shared by all its envs; the least
recently used is closed past it. Each holds an EGL context of about 180 MB here (measured: 10
task renderers took one env from 224 to 1983 MB). A renderer per env and task instead reached
10-11 GB in a worker of 8 envs that visit all of MT10 (srpo on MT10, OOM-killed on the 24 GB
reference machine), and a bound on that alone makes a new one (0.5-0.8 s) on most resets.
Sharing is exact: the context holds only the task's meshes and textures (the same XML for every
env), and each env's own model and data build the scene, so a body or site an env moves through
its model is drawn where that env put it (tests/test_metaworld_render.py)."""
_RENDERERS: OrderedDict[tuple[str, int, bool], Any] = OrderedDict()  # (task, size, fast_render)
_OPEN_ENVS = [0]  # envs made and not yet closed in this process: the last close frees renderers
SNAPSHOT_FIELDS = (
    "xpos", "xquat", "xmat", "xipos", "ximat", "geom_xpos", "geom_xmat", "site_xpos",
    "site_xmat", "cam_xpos", "cam_xmat", "light_xpos", "light_xdir", "ten_wrapadr",
    "ten_wrapnum", "wrap_obj", "wrap_xpos", "qpos", "mocap_pos", "mocap_quat",
)  # fmt: skip
"""The mjData arrays `mujoco.mjv_updateScene` reads for the corner camera's frame (the poses of
bodies, geoms, sites, cameras, lights and tendon paths; the joint and mocap state for skins and
completeness): a render snapshot. Checked byte for byte against live frames on every MT10 task
(tests/test_metaworld_render.py)."""

# One instruction per task, written from the task definitions in the Meta-World paper (Yu et al.,
# 2019, appendix table of task descriptions).
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "pick up the nut and place it onto the peg",
    "basketball-v3": "dunk the basketball into the basket",
    "bin-picking-v3": "grasp the puck from one bin and place it into the other bin",
    "box-close-v3": "grasp the cover and close the box with it",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "bypass the wall and press the button from the top",
    "button-press-v3": "press the button",
    "button-press-wall-v3": "bypass the wall and press the button",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "rotate the dial 180 degrees",
    "disassemble-v3": "pick the nut out of the peg",
    "door-close-v3": "close the door with its revolving joint",
    "door-lock-v3": "lock the door by rotating the lock clockwise",
    "door-open-v3": "open the door with its revolving joint",
    "door-unlock-v3": "unlock the door by rotating the lock counter-clockwise",
    "hand-insert-v3": "insert the gripper into the hole",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "open the drawer",
    "faucet-open-v3": "rotate the faucet counter-clockwise",
    "faucet-close-v3": "rotate the faucet clockwise",
    "hammer-v3": "hammer the screw into the wall",
    "handle-press-side-v3": "press the handle down sideways",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up sideways",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever down 90 degrees",
    "pick-place-wall-v3": "pick the puck, bypass the wall and place the puck at the goal",
    "pick-out-of-hole-v3": "pick the puck up out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the cabinet",
    "plate-slide-side-v3": "slide the plate into the cabinet sideways",
    "plate-slide-back-v3": "get the plate out of the cabinet",
    "plate-slide-back-side-v3": "get the plate out of the cabinet sideways",
    "peg-insert-side-v3": "insert the peg sideways into the hole",
    "peg-unplug-side-v3": "unplug the peg sideways",
    "soccer-v3": "kick the soccer ball into the goal",
    "stick-push-v3": "grasp the stick and push the box with it",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "bypass the wall and push the puck to the goal",
    "push-back-v3": "pull the puck back to the goal",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "bypass the wall and reach the goal position",
    "shelf-place-v3": "pick up the puck and place it onto the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "push the window open",
    "window-close-v3": "push the window closed",
}

MT10 = [
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
]  # fmt: skip  (metaworld.env_dict.MT10_V3, same order)


@dataclass
class MetaWorldConfig:
    """Which initial states form each split (seeds of the env's own reset sampler)."""

    num_train_states: int = 1000
    """Train initial states per task. 1000 keeps RL from revisiting a handful of starts."""
    num_eval_states: int = 50
    """Eval initial states per task. 50 per task is the LIBERO protocol's count, used here too."""
    train_seed_offset: int = 0
    """First train seed."""
    eval_seed_offset: int = 1_000_000
    """First eval seed; far from the train range so the two can never overlap."""


class MetaWorldBenchmark(Benchmark):
    name = "metaworld"
    action_dim = ACTION_DIM
    state_dim = STATE_DIM
    fps = 80  # MuJoCo timestep 0.0025 s x frame_skip 5 = 12.5 ms per env step
    camera_names = (CAMERA,)
    packages = ("metaworld", "mujoco")

    def __init__(self, config: MetaWorldConfig | None = None):
        self.config = config or MetaWorldConfig()
        if self.config.train_seed_offset + self.config.num_train_states > (
            self.config.eval_seed_offset
        ):
            raise ValueError("train seeds would overlap the eval seeds; move eval_seed_offset")

    def task_names(self) -> list[str]:
        return list(INSTRUCTIONS)

    def task_sets(self) -> dict[str, list[str]]:
        return {"MT10": list(MT10), "MT50": self.task_names()}

    def tasks(self, split: str, names: Sequence[str] | None = None) -> list[TaskSpec]:
        check_split(split)
        cfg = self.config
        if split == "train":
            ids = tuple(range(cfg.train_seed_offset, cfg.train_seed_offset + cfg.num_train_states))
        else:
            ids = tuple(range(cfg.eval_seed_offset, cfg.eval_seed_offset + cfg.num_eval_states))
        return [
            TaskSpec(self.name, n, INSTRUCTIONS[n], split, ids, MAX_PATH_LENGTH)
            for n in self.resolve_task_names(names)
        ]

    def env_factory(self, cfg: EnvConfig) -> MetaWorldEnvFactory:
        return MetaWorldEnvFactory(cfg)


@dataclass
class MetaWorldEnvFactory:
    """Picklable: builds one env slot inside a worker process."""

    cfg: EnvConfig

    def __call__(self) -> MetaWorldTaskEnv:
        return MetaWorldTaskEnv(self.cfg)


def _renderer(task: str, model: Any, size: int, fast_render: bool) -> Any:
    """The process's renderer of a task's meshes and textures at one size (see MAX_RENDERERS)."""
    import mujoco

    key = (task, size, fast_render)
    if key not in _RENDERERS:
        while len(_RENDERERS) >= MAX_RENDERERS:  # the least recently used goes
            _RENDERERS.popitem(last=False)[1].close()
        if fast_render:
            model.vis.quality.offsamples = 0  # no multisampling (read when the context is made)
        renderer = mujoco.Renderer(model, height=size, width=size)
        if fast_render:
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        _RENDERERS[key] = renderer
    _RENDERERS.move_to_end(key)
    return _RENDERERS[key]


class MetaWorldTaskEnv(gym.Env):
    """One env slot that can reset into any Meta-World task and initial state.

    Each task's MuJoCo env is built on first use and kept (about 0.2 s to build, a few MB each).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, cfg: EnvConfig):
        self.cfg = cfg
        spaces: dict[str, gym.Space] = {
            "state": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)
        }
        if cfg.images:
            size = cfg.image_size
            spaces["image"] = gym.spaces.Box(0, 255, (1, size, size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._envs: dict[str, Any] = {}
        self._env: Any = None
        self._task_name = ""
        self._open = True
        _OPEN_ENVS[0] += 1

    def _get_env(self, name: str) -> Any:
        if name not in self._envs:
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS
            from metaworld.types import Task

            cls = ALL_V3_ENVIRONMENTS[name]
            env = cls()
            space = env._random_reset_space
            # set_task is Meta-World's public way to make the goal observable (it also resets the
            # cached observation space, which otherwise clips the goal to zero).
            data = dict(
                env_cls=cls, rand_vec=(space.low + space.high) / 2, partially_observable=False
            )
            env.set_task(Task(env_name=name, data=pickle.dumps(data)))
            # Sample each episode's rand_vec from env.np_random, which we seed per episode.
            env._freeze_rand_vec = False
            env.seeded_rand_vec = True
            self._envs[name] = env
        return self._envs[name]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        from gymnasium.utils import seeding

        if not options or "task" not in options or "init_id" not in options:
            raise ValueError('reset needs options={"task": TaskSpec, "init_id": int}')
        task: TaskSpec = options["task"]
        self._env = self._get_env(task.name)
        self._task_name = task.name
        max_steps = self.cfg.max_steps or task.max_steps
        self._env.max_path_length = max_steps  # Meta-World truncates (and refuses steps) here
        self._env.np_random, _ = seeding.np_random(int(options["init_id"]))
        state, _ = self._env.reset()
        return self._observe(state), {"success": False}

    def step(self, action: np.ndarray):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, reward, terminated, truncated, info = self._env.step(
                np.clip(action, -1.0, 1.0).astype(np.float32)
            )
        info = {"success": bool(info["success"])}
        return self._observe(state), float(reward), bool(terminated), bool(truncated), info

    def _observe(self, state: np.ndarray) -> dict[str, np.ndarray]:
        obs = {"state": np.asarray(state, dtype=np.float32)}
        if self.cfg.images:
            obs["image"] = self._render(self.cfg.image_size)[None]
        return obs

    def _render(self, size: int) -> np.ndarray:
        import mujoco

        renderer = _renderer(self._task_name, self._env.model, size, self.cfg.fast_render)
        model = self._env.model  # this env's: its goal sites, not the renderer's first env's
        camera = mujoco.MjvCamera()
        camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        camera.fixedcamid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA)
        mujoco.mjv_updateScene(
            model,
            self._env.data,
            mujoco.MjvOption(),
            None,
            camera,
            mujoco.mjtCatBit.mjCAT_ALL,
            renderer.scene,
        )
        # The "corner" camera is mounted rolled by 180 degrees (the table renders at the top).
        # Rotate the image back; a vertical flip alone would mirror the scene.
        return np.ascontiguousarray(renderer.render()[::-1, ::-1])

    def render(self) -> np.ndarray:
        """A video frame (video_size x video_size x 3, uint8) of the corner camera."""
        return self._render(self.cfg.video_size)

    def render_snapshot(self) -> dict[str, np.ndarray]:
        """A copy of what `render()` would draw now (the simulator's poses it reads), so the frame
        can be drawn later by `render_snapshots`: a rollout that keeps 16 of an episode's 60-odd
        frames renders only those (a few KB per snapshot against about 16 ms per 128 px frame)."""
        data = self._env.data
        return {name: getattr(data, name).copy() for name in SNAPSHOT_FIELDS}

    def render_snapshots(self, snapshots: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """The frames `render()` would have drawn when each snapshot was taken (byte for byte),
        drawn now; the live poses are put back after. Valid until the next reset (a reset
        moves goals and objects through the model, which the snapshot does not hold)."""
        data = self._env.data
        live = self.render_snapshot()
        frames = []
        try:
            for snap in snapshots:
                for name, value in snap.items():
                    getattr(data, name)[...] = value
                frames.append(self.render())
        finally:
            for name, value in live.items():
                getattr(data, name)[...] = value
        return frames

    def sampled_init_vector(self) -> np.ndarray:
        """The object/goal positions Meta-World sampled at the last reset (for split tests)."""
        return np.array(self._env._last_rand_vec, dtype=np.float64)

    def close(self) -> None:
        if self._open:
            self._open = False
            _OPEN_ENVS[0] -= 1
            while not _OPEN_ENVS[0] and _RENDERERS:  # no env of this process draws any more
                _RENDERERS.popitem()[1].close()
        for env in self._envs.values():
            env.close()
        self._envs.clear()
