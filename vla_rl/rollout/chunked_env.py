"""ChunkedEnv: executes a whole action chunk (Ta actions) inside the env's own process.

Executing the chunk next to the simulator costs one inter-process message per chunk instead of
one per env step, which is what lets the rollout engine reach the raw simulator's throughput.

Episode-end semantics (the easy-to-miss RL details, in one place):
  * success is sticky: once `info["success"]` is true at any env step, the episode has succeeded.
  * terminated = the task succeeded (when `terminate_on_success`, the default, as in every VLA-RL
    evaluation). The state after success is terminal: value methods must NOT bootstrap past it.
  * truncated = the episode hit its horizon without success. The state is not terminal: value
    methods SHOULD bootstrap from it (time limit, not failure).
  * A chunk stops executing at the first env step that terminates or truncates; the remaining
    actions of the chunk are dropped and `info["steps"]` says how many ran (1..Ta).
  * There is no autoreset: after an episode ends, stepping raises until `reset` is called, so a
    terminal observation can never be confused with the first observation of the next episode.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from vla_rl.rollout.frames import kept_frames


class ChunkedEnv(gym.Wrapper):
    """Wraps a single env whose `step` takes one action (Da,) so that `step` takes (n, Da)."""

    def __init__(self, env: gym.Env, terminate_on_success: bool = True):
        super().__init__(env)
        self.terminate_on_success = terminate_on_success
        self.record_frames: bool | str | int = False
        """True: a frame per env step; "chunk": one at reset and one per chunk; an int F: of those,
        only the `kept_frames(n, F)`, all at the episode's end (drawn then from render snapshots
        where the env has them, so the other frames are never rendered)."""
        self._snapshots: list[Any] = []
        self._done = True
        self._success = False
        self._episode_steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._done = False
        self._success = bool(info.get("success", False))
        self._episode_steps = 0
        info = dict(info, success=self._success)
        if self._sampling():
            self._snapshots = [self._snapshot()]
            info["frames"] = []  # all of them at the episode's end
        elif self.record_frames:
            info["frames"] = [self.env.render()]
        return obs, info

    def _sampling(self) -> bool:
        return type(self.record_frames) is int  # not a bool

    def _snapshot(self) -> Any:
        """What the frame would show now: a render snapshot, or the frame itself."""
        return self.env.render_snapshot() if self._snapshots_drawn() else self.env.render()

    def _snapshots_drawn(self) -> bool:
        return hasattr(self.env, "render_snapshots")

    def _sampled_frames(self) -> list[np.ndarray]:
        """The kept frames of the episode just ended, from its snapshots (then dropped)."""
        keep = [self._snapshots[i] for i in kept_frames(len(self._snapshots), self.record_frames)]
        self._snapshots = []
        return self.env.render_snapshots(keep) if self._snapshots_drawn() else keep

    def step(self, chunk: np.ndarray):
        """Execute up to n = len(chunk) actions. Returns (obs, reward_sum, terminated, truncated,
        info) with info["rewards"] (steps,), info["steps"], info["success"] (sticky) and, when
        recording, info["frames"] (H x W x 3 uint8: one per step, or with record_frames="chunk"
        only the chunk's last, or with an int the episode's kept frames on its last chunk)."""
        if self._done:
            raise RuntimeError("episode has ended; call reset() before step()")
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim == 1:  # a single action is a chunk of length 1
            chunk = chunk[None]
        rewards: list[float] = []
        frames: list[np.ndarray] = []
        terminated = truncated = False
        obs, info = None, {}
        for action in chunk:
            obs, reward, env_terminated, truncated, info = self.env.step(action)
            self._episode_steps += 1
            rewards.append(float(reward))
            if self.record_frames is True:
                frames.append(self.env.render())
            self._success = self._success or bool(info.get("success", False))
            terminated = bool(env_terminated) or (self.terminate_on_success and self._success)
            if terminated or truncated:
                break
        self._done = terminated or truncated
        if self.record_frames == "chunk":  # one frame per decision step: cheap enough to train on
            frames.append(self.env.render())
        elif self._sampling():
            self._snapshots.append(self._snapshot())
            if self._done:
                frames = self._sampled_frames()
        out_info = dict(
            info,
            rewards=np.asarray(rewards, dtype=np.float32),
            steps=len(rewards),
            success=self._success,
            episode_steps=self._episode_steps,
        )
        if self.record_frames:
            out_info["frames"] = frames
        return obs, float(sum(rewards)), terminated, bool(truncated), out_info
