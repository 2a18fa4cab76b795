"""A tiny benchmark for fast engine tests: a 1-D point that must reach a target.

state = [position, target]; action in [-1, 1] moves the point by 0.1 * action; success when
|position - target| < 0.05. The initial position is drawn from the init id (deterministic).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from vla_rl.core.benchmark import Benchmark, EnvConfig, TaskSpec, check_split
from vla_rl.rollout.batched import BatchedSlotEnv

TARGETS = {"left": -0.5, "right": 0.5}


class ToyBenchmark(Benchmark):
    name = "toy"
    action_dim = 1
    state_dim = 2

    def __init__(self, horizon: int = 30):
        self.horizon = horizon

    def task_names(self) -> list[str]:
        return list(TARGETS)

    def task_sets(self) -> dict[str, list[str]]:
        return {"ALL": list(TARGETS)}

    def tasks(self, split: str, names: Sequence[str] | None = None) -> list[TaskSpec]:
        check_split(split)
        ids = tuple(range(0, 100)) if split == "train" else tuple(range(1000, 1020))
        return [
            TaskSpec("toy", n, f"move to the {n}", split, ids, self.horizon)
            for n in self.resolve_task_names(names)
        ]

    def env_factory(self, cfg: EnvConfig):
        return ToyEnvFactory(cfg)


@dataclass
class ToyEnvFactory:
    cfg: EnvConfig

    def __call__(self):
        return ToyEnv(self.cfg)


class ToyEnv(gym.Env):
    def __init__(self, cfg: EnvConfig):
        self.cfg = cfg
        self.observation_space = gym.spaces.Dict(
            {"state": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)}
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        task = options["task"]
        rng = np.random.default_rng(options["init_id"])
        self.target = TARGETS[task.name]
        self.pos = float(rng.uniform(-1, 1))
        self.t = 0
        self.max_steps = self.cfg.max_steps or task.max_steps
        return self._obs(), {"success": False}

    def step(self, action):
        self.pos += 0.1 * float(np.clip(action[0], -1, 1))
        self.t += 1
        success = abs(self.pos - self.target) < 0.05
        reward = -abs(self.pos - self.target)
        return self._obs(), reward, False, self.t >= self.max_steps, {"success": success}

    def _obs(self):
        obs = {"state": np.array([self.pos, self.target], dtype=np.float32)}
        if self.cfg.images:  # one camera: a bright column at the point's position
            size = self.cfg.image_size
            image = np.zeros((1, size, size, 3), dtype=np.uint8)
            image[0, :, int((self.pos + 1) / 2 * (size - 1)) % size] = 255
            obs["image"] = image
        return obs

    def render(self):
        frame = np.zeros((8, 8, 3), dtype=np.uint8)
        frame[:, int((self.pos + 1) * 3.5) % 8] = 255
        return frame


class ToyBatchedEnv(BatchedSlotEnv):
    """ToyEnv's dynamics for all B slots in one numpy call per env step (the shape of a batched
    world model): the same episodes give the same observations, rewards and ends as ToyEnv."""

    def __init__(self, num_envs: int, cfg: EnvConfig):
        super().__init__(num_envs, gym.spaces.Box(-1.0, 1.0, (1,), np.float32), cfg.max_steps)
        self.pos = np.zeros(num_envs)
        self.target = np.zeros(num_envs)
        self.batch_calls = 0  # step_batch calls (one per env step of all running slots)

    def _state_obs(self, slots):
        idx = list(slots)
        return {"state": np.stack([self.pos[idx], self.target[idx]], 1).astype(np.float32)}

    def reset_batch(self, slots, episodes):
        for slot, ep in zip(slots, episodes):
            self.target[slot] = TARGETS[ep.task.name]
            self.pos[slot] = float(np.random.default_rng(ep.init_id).uniform(-1, 1))
        return self._state_obs(slots)

    def step_batch(self, slots, actions):
        self.batch_calls += 1
        idx = list(slots)
        # float64 as ToyEnv's Python floats; the same operations in the same order.
        self.pos[idx] += 0.1 * np.clip(actions[:, 0], -1, 1).astype(np.float64)
        gap = np.abs(self.pos[idx] - self.target[idx])
        return self._state_obs(slots), -gap, gap < 0.05

    def render_batch(self, slots):
        frames = np.zeros((len(slots), 8, 8, 3), dtype=np.uint8)
        for j, slot in enumerate(slots):
            frames[j, :, int((self.pos[slot] + 1) * 3.5) % 8] = 255
        return frames


class ToyBatchedBenchmark(ToyBenchmark):
    """The toy benchmark with its slots stepped in-process by one batched object."""

    def make_env(self, tasks, cfg=None):
        cfg = cfg or EnvConfig()
        return ToyBatchedEnv(cfg.num_envs, cfg)


class SleepyToyBenchmark(ToyBenchmark):
    """The toy benchmark whose every env step takes `sleep_s` seconds (a hung simulator)."""

    def __init__(self, horizon: int = 30, sleep_s: float = 30.0):
        super().__init__(horizon)
        self.sleep_s = sleep_s

    def env_factory(self, cfg: EnvConfig):
        return SleepyToyEnvFactory(cfg, self.sleep_s)


@dataclass
class SleepyToyEnvFactory:
    cfg: EnvConfig
    sleep_s: float

    def __call__(self):
        return SleepyToyEnv(self.cfg, self.sleep_s)


class SleepyToyEnv(ToyEnv):
    def __init__(self, cfg: EnvConfig, sleep_s: float):
        super().__init__(cfg)
        self.sleep_s = sleep_s

    def step(self, action):
        import time

        time.sleep(self.sleep_s)
        return super().step(action)


class FaultyToyBenchmark(ToyBenchmark):
    """The toy benchmark whose env fails at the first step of episode `init_id`: it dies
    (os._exit) or hangs (sleeps an hour). Once, unless `always`: the first failure leaves
    `marker` behind, so the re-run of that episode in a fresh worker succeeds."""

    def __init__(self, init_id: int, marker: str, mode: str = "die", always: bool = False):
        super().__init__()
        self.fault = (init_id, marker, mode, always)

    def env_factory(self, cfg: EnvConfig):
        return FaultyToyEnvFactory(cfg, self.fault)


@dataclass
class FaultyToyEnvFactory:
    cfg: EnvConfig
    fault: tuple

    def __call__(self):
        return FaultyToyEnv(self.cfg, self.fault)


class FaultyToyEnv(ToyEnv):
    def __init__(self, cfg: EnvConfig, fault: tuple):
        super().__init__(cfg)
        self.fault = fault

    def reset(self, *, seed=None, options=None):
        self.init_id = options["init_id"]
        return super().reset(seed=seed, options=options)

    def step(self, action):
        import os
        import time
        from pathlib import Path

        init_id, marker, mode, always = self.fault
        if self.init_id == init_id and (always or not Path(marker).exists()):
            Path(marker).touch()
            if mode == "die":
                os._exit(1)
            time.sleep(3600)
        return super().step(action)
