"""What residual RL learns from: n-step transitions (`transition_fields`), made from finished
online episodes (`SlotEpisodes`) and from demonstrations (`load_demos`, `demo_buffer`).

Every action is in the normalised space [-1, 1]^Da; L is an episode's length in control steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vla_rl.core.config import ConfigError
from vla_rl.rl.replay_buffer import ReplayBuffer
from vla_rl.rl.returns import n_step_returns

if TYPE_CHECKING:
    from vla_rl.core.benchmark import Benchmark, TaskSpec
    from vla_rl.core.slots import SlotStep
    from vla_rl.core.types import Observation
    from vla_rl.methods.residual.config import ResidualConfig
    from vla_rl.methods.residual.policy import ResidualPolicy
    from vla_rl.methods.residual.shaping import Shaping
    from vla_rl.runs.run import RunConfig


def transition_fields(state_dim: int, action_dim: int) -> dict[str, tuple[tuple[int, ...], type]]:
    """The columns of one n-step transition. Actions are normalised to [-1, 1]."""
    return {
        "state": ((state_dim,), np.float32),
        "task": ((), np.int64),
        "base": ((action_dim,), np.float32),  # a_base at s_t
        "action": ((action_dim,), np.float32),  # executed a_t = clamp(a_base + residual)
        "ret": ((), np.float32),  # sum_{i<k} gamma^i r_{t+i}
        "next_state": ((state_dim,), np.float32),  # s_{t+k}
        "next_base": ((action_dim,), np.float32),  # a_base at s_{t+k}
        "discount": ((), np.float32),  # gamma^k, or 0 past a terminal (success) state
    }


def episode_transitions(
    states: np.ndarray,
    bases: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminated: bool,
    task: int,
    n: int,
    gamma: float,
) -> dict[str, np.ndarray]:
    """The L n-step transitions of one episode of L steps.

    states, bases: (L + 1, .) including the state after the last step and the base action there
    (irrelevant when the episode terminated); actions (L, Da); rewards (L,).
    """
    ret, nxt, discount = n_step_returns(rewards, terminated, n, gamma)
    length = len(actions)
    return {
        "state": states[:length],
        "task": np.full(length, task, dtype=np.int64),
        "base": bases[:length],
        "action": actions,
        "ret": ret,
        "next_state": states[nxt],
        "next_base": bases[nxt],
        "discount": discount,
    }


def demo_transitions(
    episodes: list,
    policy: ResidualPolicy,
    task_of: dict[str, tuple[str, int]],
    cfg: ResidualConfig,
    bonuses: list[np.ndarray | None] | None = None,
) -> dict[str, np.ndarray] | None:
    """Successful demonstrations as n-step transitions with base actions computed the way the
    BaseActionQueue computes them online: the base is queried on the demo observation at every
    chunk start and its chunk is read open-loop (ResFiT's use_base_policy_for_base_actions).
    bonuses: per episode, a dense reward (L,) added to its sparse success (`shaping.py`)."""
    rows = []
    for k, ep in enumerate(episodes):
        if not ep.success or ep.task not in task_of:
            continue  # only demonstrations of this run's tasks that reached the goal
        name, task = task_of[ep.task]
        length = ep.length
        starts = np.arange(0, length, policy.base.chunk_size)
        obs = {"state": ep.state[starts], "instruction": [ep.task] * len(starts),
               "task": [name] * len(starts)}  # fmt: skip
        with torch.no_grad():
            chunks = policy.base.sample_actions(obs, policy.config["base_deterministic"]).actions
        base = policy.to_unit(chunks).reshape(-1, chunks.shape[-1])[:length].numpy()
        states = np.concatenate([ep.state, ep.state[-1:]])  # the final state is terminal
        bases = np.concatenate([base, base[-1:]])
        actions = policy.to_unit(torch.as_tensor(ep.action)).clamp(-1, 1).numpy()
        rewards = np.zeros(length, dtype=np.float32)
        rewards[-1] = 1.0  # sparse success reward on the step that reached the goal
        if bonuses is not None and bonuses[k] is not None:
            rewards = rewards + bonuses[k]
        rows.append(episode_transitions(states, bases, actions, rewards, True, task,
                                        cfg.n_step, cfg.gamma))  # fmt: skip
    if not rows:
        return None
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def load_demos(
    cfg: RunConfig,
    rcfg: ResidualConfig,
    benchmark: Benchmark,
    tasks: list[TaskSpec],
    frame_size: int = 0,
) -> tuple[list, list[list[np.ndarray]] | None]:
    """Demonstration episodes for the demo buffer (see ResidualConfig.demos), and with
    frame_size > 0 the frames (L + 1 per episode, H = W = frame_size) a critic reward scores:
    the scripted experts' are rendered as they run; a dataset's camera need not be the one
    the critic was fitted on, so a dataset is refused then."""
    if rcfg.demos == "none":
        return [], None
    if rcfg.demos == "scripted":
        from vla_rl.core.benchmark import first_episodes
        from vla_rl.core.policy import load_policy
        from vla_rl.data.episodes import records_to_episodes
        from vla_rl.rollout.engine import RolloutEngine

        try:  # Meta-World's and LIBERO's experts; another benchmark has none
            expert = load_policy("scripted", benchmark)
        except ValueError as err:
            raise ValueError(
                f"--residual.demos scripted: {err}; pass a dataset path or 'none'"
            ) from err
        env_cfg = dataclasses.replace(cfg.env, video_size=frame_size) if frame_size else cfg.env
        venv = benchmark.make_env(tasks, env_cfg)
        try:
            records = RolloutEngine(venv, cfg.env.pipeline_groups).run(
                expert, first_episodes(tasks, rcfg.demo_episodes), keep_steps=True,
                seed=cfg.seed, record_video=(lambda i, s: True) if frame_size else None,
            )  # fmt: skip
        finally:
            venv.close()
        frames = [list(r.frames or []) for r in records] if frame_size else None
        return records_to_episodes(records, benchmark), frames
    if frame_size:
        raise ConfigError(
            f"--residual.reward {rcfg.reward} shapes the demonstrations too, from frames of the "
            f"critic's camera: --residual.demos {rcfg.demos!r} is a dataset; valid choices "
            "here: scripted, none"
        )
    from vla_rl.data.episodes import load_episodes

    if not Path(rcfg.demos).exists():
        raise FileNotFoundError(
            f"--residual.demos {rcfg.demos!r} does not exist; valid choices: scripted, none, "
            "or a LeRobot v3.0 dataset directory / LIBERO .hdf5 file"
        )
    return load_episodes(rcfg.demos, images=False), None


def demo_buffer(
    episodes: list,
    policy: ResidualPolicy,
    tasks: list[TaskSpec],
    fields: dict[str, tuple[tuple[int, ...], type]],
    cfg: ResidualConfig,
    shaping: Shaping | None = None,
    frames: list[list[np.ndarray]] | None = None,
) -> ReplayBuffer | None:
    """The demo buffer, exactly as large as the demonstrations' transitions; None without any.
    Rebuilt on resume rather than saved: it is a function of the config. With `shaping`, the
    demonstrations' rewards are shaped as the online episodes' are (their `frames` from
    `load_demos` for a critic, their env rewards for the oracle)."""
    task_of = {t.instruction: (t.name, i) for i, t in enumerate(tasks)}
    bonuses = None
    if shaping is not None:
        bonuses = [
            shaping.bonus(None if frames is None else frames[k], np.asarray(ep.reward), True,
                          True, ep.task, log=False) if ep.success else None
            for k, ep in enumerate(episodes)
        ]  # fmt: skip
    rows = demo_transitions(episodes, policy, task_of, cfg, bonuses)
    if rows is None:
        return None
    demos = ReplayBuffer(len(rows["ret"]), fields)
    demos.add(rows)
    return demos


@dataclass
class _Episode:
    """One slot's episode so far: per control step the state (Ds,), the normalised base action
    and executed action (Da,), the sparse reward, and the action as the env received it (Da,),
    which a resumed run replays (`inflight.py`)."""

    states: list[np.ndarray] = field(default_factory=list)
    bases: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    env_actions: list[np.ndarray] = field(default_factory=list)
    # What a dense reward scores, not saved in checkpoints: a resumed run's replay of the env
    # actions renders the frames and returns the env rewards again (`inflight.py`).
    frames: list[np.ndarray] = field(default_factory=list)  # (H, W, 3): before step 0, after each
    env_rewards: list[float] = field(default_factory=list)  # the simulator's reward per step


@dataclass
class Finished:
    """An episode that ended on the last step: its slot, success, and n-step transitions."""

    slot: int
    success: bool
    transitions: dict[str, np.ndarray]


class SlotEpisodes:
    """The episode in progress on each of B env slots, one control step at a time (chunk size 1);
    an episode that ends becomes its L n-step transitions. Checkpoints hold the episodes in
    progress (`inflight.py`): a resumed run continues them."""

    def __init__(
        self,
        policy: ResidualPolicy,
        num_slots: int,
        n_step: int,
        gamma: float,
        shaping: Shaping | None = None,
    ):
        """shaping: a dense reward added to the sparse success of every finished episode
        (`shaping.py`); it needs each slot's first frame from `start`."""
        self.policy, self.n_step, self.gamma, self.shaping = policy, n_step, gamma, shaping
        self.episodes = [_Episode() for _ in range(num_slots)]

    def drop(self, slots: list[int]) -> None:
        """Forget the episodes in progress on `slots` (their env was lost with its worker)."""
        for i in slots:
            self.episodes[i] = _Episode()

    def start(self, slots: list[int], first_frames: list[list[np.ndarray] | None]) -> None:
        """New episodes begin on `slots`, with the frames `reset_slots` rendered (or None)."""
        for i, frames in zip(slots, first_frames):
            self.episodes[i] = _Episode(frames=list(frames or [])[-1:])

    def record(
        self,
        obs: Observation,
        base_unit: torch.Tensor,
        action_unit: torch.Tensor,
        env_action: np.ndarray,
        results: list[SlotStep],
        next_obs: Observation,
    ) -> list[Finished]:
        """Append one step to every slot: obs before it (with "base_action"), base_unit and
        action_unit (B, Da), env_action (B, Da) as sent to the env, results of slots 0..B-1,
        next_obs after it (the state and base action there close a truncated episode's last
        n-step target)."""
        finished = []
        for i, res in enumerate(results):
            if res.lost:  # its env was lost with its worker; `drop` has started it afresh
                continue
            ep = self.episodes[i]
            ep.states.append(obs["state"][i])
            ep.bases.append(base_unit[i].numpy())
            ep.actions.append(action_unit[i].numpy())
            ep.rewards.append(1.0 if res.terminated else 0.0)  # sparse success
            ep.env_actions.append(env_action[i])
            ep.env_rewards.append(float(np.sum(res.rewards)))
            if res.frames:
                ep.frames.append(res.frames[-1])
            if not (res.terminated or res.truncated):
                continue
            rewards = np.array(ep.rewards, dtype=np.float32)
            if self.shaping is not None:
                rewards = rewards + self.shaping.bonus(
                    ep.frames or None, np.array(ep.env_rewards), res.terminated, res.success,
                    obs["instruction"][i],
                )  # fmt: skip
            states = np.stack(ep.states + [next_obs["state"][i]])
            final_base = self.policy.to_unit(torch.as_tensor(next_obs["base_action"][i]))
            bases = np.stack(ep.bases + [final_base.numpy()])
            task = self.policy.task_index[obs["task"][i]]
            rows = episode_transitions(
                states, bases, np.stack(ep.actions), rewards, res.terminated, task,
                self.n_step, self.gamma,
            )  # fmt: skip
            finished.append(Finished(i, res.success, rows))
            self.episodes[i] = _Episode()
        return finished
