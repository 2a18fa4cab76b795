"""A simulated benchmark for throughput measurements (`vla-rl bench-scale`): an env whose step
burns a set amount of CPU time and whose observations have Meta-World's shapes.

Why it exists: how rollouts scale over workers depends on the ratio of a simulator step's cost
to the cost of moving its observation and of one policy call, not on physics. A step that costs
`step_ms` of CPU (Meta-World's is about 0.5 ms on the 2-core reference machine; LIBERO with a
128 px camera about 10x that) makes the scaling table of a slow simulator cheap to produce and
the same on any machine, and `image_size` sets the bytes each observation carries.

The cost is CPU time of the stepping thread (`time.thread_time`), not wall time: a wall-clock
wait would finish on schedule even when 4 workers share 2 cores, and the table would show
scaling the machine does not have.

Shapes are Meta-World's (state Ds = 39, actions Da = 4 in [-1, 1]) so that its policies, the
bundled `metaworld-flow` base included, run here with real inference cost. Episodes end at the
horizon (truncated); nothing ever succeeds. Not registered as a benchmark: it has nothing to
train or evaluate on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from vla_rl.core.benchmark import Benchmark, EnvConfig, TaskSpec, check_split

STATE_DIM = 39  # Meta-World's
ACTION_DIM = 4
TASK = "simulated-v0"
# An MT10 instruction: the word-level instruction encoders of Meta-World policies know its words.
INSTRUCTION = "press the button from the top"


class SimulatedBenchmark(Benchmark):
    name = "simulated"
    action_dim = ACTION_DIM
    state_dim = STATE_DIM
    fps = 80  # Meta-World's control rate, for videos and dataset timestamps

    def __init__(self, step_ms: float = 0.5, image_size: int = 0, horizon: int = 200):
        """step_ms: CPU milliseconds one env step burns. image_size: S of an (1, S, S, 3) uint8
        camera in every observation (0: state only). horizon: env steps per episode."""
        if step_ms < 0:
            raise ValueError(f"step_ms must be >= 0, got {step_ms}")
        if image_size < 0:
            raise ValueError(f"image_size must be >= 0, got {image_size}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.step_ms, self.image_size, self.horizon = step_ms, image_size, horizon
        self.camera_names = ("simulated",) if image_size else ()

    def task_names(self) -> list[str]:
        return [TASK]

    def tasks(self, split: str, names: Sequence[str] | None = None) -> list[TaskSpec]:
        check_split(split)
        ids = tuple(range(0, 50)) if split == "train" else tuple(range(1000, 1050))
        return [
            TaskSpec(self.name, n, INSTRUCTION, split, ids, self.horizon)
            for n in self.resolve_task_names(names)
        ]

    def env_factory(self, cfg: EnvConfig) -> SimulatedEnvFactory:
        return SimulatedEnvFactory(self.step_ms, self.image_size, cfg.max_steps)


@dataclass
class SimulatedEnvFactory:
    """Picklable: worker processes and Ray actors build their envs with it."""

    step_ms: float
    image_size: int
    max_steps: int | None

    def __call__(self) -> SimulatedEnv:
        return SimulatedEnv(self.step_ms, self.image_size, self.max_steps)


def burn_cpu(seconds: float) -> None:
    """Spin until this thread has used `seconds` of CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class SimulatedEnv(gym.Env):
    """state <- 0.99 state + 0.01 (the action tiled over Ds); the initial state comes from the
    init id, so episodes are deterministic."""

    def __init__(self, step_ms: float, image_size: int, max_steps: int | None):
        self.step_s = step_ms / 1000
        self.image_size = image_size
        self.max_steps_override = max_steps
        spaces = {"state": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)}
        if image_size:
            spaces["image"] = gym.spaces.Box(0, 255, (1, image_size, image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self.state = np.zeros(STATE_DIM, np.float32)
        self.t, self.max_steps = 0, 1

    def reset(self, *, seed=None, options=None):
        task, init_id = options["task"], options["init_id"]
        self.state = np.random.default_rng(init_id).normal(size=STATE_DIM).astype(np.float32)
        self.t = 0
        self.max_steps = self.max_steps_override or task.max_steps
        return self._obs(), {"success": False}

    def step(self, action):
        burn_cpu(self.step_s)
        tiled = np.resize(np.asarray(action, np.float32), STATE_DIM)
        self.state = (0.99 * self.state + 0.01 * tiled).astype(np.float32)
        self.t += 1
        return self._obs(), 0.0, False, self.t >= self.max_steps, {"success": False}

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {"state": self.state.copy()}
        if self.image_size:  # content is irrelevant; its bytes are what travels
            s = self.image_size
            obs["image"] = np.full((1, s, s, 3), self.t % 256, dtype=np.uint8)
        return obs

    def render(self):
        return np.full((8, 8, 3), self.t % 256, dtype=np.uint8)
