"""Trajectories: a batch of B episodes as time-major tensors, padded to the longest (T)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vla_rl.core.benchmark import EpisodeSpec
from vla_rl.core.types import ActionSample, Observation


@dataclass
class EpisodeRecord:
    """One finished episode. The per-step lists have one entry per decision step (T_i of them)
    and are filled only when the engine runs with keep_steps=True."""

    spec: EpisodeSpec
    success: bool = False
    terminated: bool = False  # ended by success (terminal state: no bootstrap)
    truncated: bool = False  # ended by the horizon (not terminal: bootstrap)
    env_steps: int = 0
    episode_return: float = 0.0  # sum of the env's own rewards
    observations: list[Observation] = field(default_factory=list)  # each with B = 1
    samples: list[ActionSample] = field(default_factory=list)  # each with B = 1
    rewards: list[float] = field(default_factory=list)  # env reward summed over the chunk
    chunk_steps: list[int] = field(default_factory=list)  # env steps each chunk executed
    final_observation: Observation | None = None  # observation after the last chunk (B = 1)
    frames: list[np.ndarray] | None = None  # video frames (H x W x 3), when recorded

    @property
    def decision_steps(self) -> int:
        return len(self.chunk_steps)


@dataclass
class Trajectories:
    """Time-major rollout data. Entries past an episode's end are padding: `valid` is False there
    and every consumer must mask with it (padding holds copies of the last real step, never NaN,
    so a masked-out entry cannot poison a sum through 0 * NaN).

    obs:        state (T, B, Ds) float32; image (T, B, Ncam, H, W, 3) uint8 if rendered;
                instruction / task: lists of B strings (constant within an episode).
    actions:    (T, B, Ta, Da) executed chunks (env units).
    log_probs:  (T, B) log-probs at sampling time, or None for policies without them.
    extras:     name -> (T, B, ...) what the policy needs to re-score its samples.
    rewards:    (T, B) env reward summed over each chunk.
    valid:      (T, B) bool, True for real decision steps.
    terminated: (T, B) bool, True at the step that reached success (terminal: no bootstrap).
    truncated:  (T, B) bool, True at the step that hit the horizon (bootstrap from final_obs).
    success:    (B,) bool episode success.
    group:      (B,) int group id (same initial state), -1 when ungrouped.
    final_obs:  observation after each episode's last chunk, state (B, Ds) (+ image).
    frames:     per episode, its video frames (n_b, H, W, 3) uint8 when the rollout recorded
                them (reward models that embed videos: SRPO's progress), else None.
    chunk_steps: (T, B) int, env steps each decision step executed (Ta, fewer where an
                episode ended inside its chunk; 0 on padding), or None when not known.
    """

    obs: Observation
    actions: torch.Tensor
    log_probs: torch.Tensor | None
    extras: dict[str, torch.Tensor]
    rewards: torch.Tensor
    valid: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    success: torch.Tensor
    group: torch.Tensor
    final_obs: Observation
    tasks: list[str] = field(default_factory=list)
    init_ids: list[int] = field(default_factory=list)
    frames: list[np.ndarray] | None = None
    chunk_steps: torch.Tensor | None = None

    @property
    def num_steps(self) -> int:  # T
        return int(self.valid.shape[0])

    @property
    def batch_size(self) -> int:  # B
        return int(self.valid.shape[1])

    @property
    def lengths(self) -> torch.Tensor:  # (B,) decision steps per episode
        return self.valid.sum(0)

    def sample_at(self, t: int) -> ActionSample:
        """The ActionSample of decision step t for all B episodes."""
        return ActionSample(
            actions=self.actions[t],
            log_prob=None if self.log_probs is None else self.log_probs[t],
            extras={k: v[t] for k, v in self.extras.items()},
        )

    def gather_obs(self, t_idx: torch.Tensor, b_idx: torch.Tensor) -> Observation:
        """The observations of decision steps (t_idx[i], b_idx[i]) as one batch of len(t_idx)."""
        out: dict = {}
        for key, value in self.obs.items():
            if isinstance(value, list):
                out[key] = [value[int(b)] for b in b_idx]
            else:
                out[key] = value[t_idx, b_idx].numpy()
        return out  # type: ignore[return-value]

    def gather_samples(self, t_idx: torch.Tensor, b_idx: torch.Tensor) -> ActionSample:
        """The ActionSamples of decision steps (t_idx[i], b_idx[i]), without log-probs."""
        return ActionSample(
            actions=self.actions[t_idx, b_idx],
            extras={k: v[t_idx, b_idx] for k, v in self.extras.items()},
        )

    def obs_at(self, t: int) -> Observation:
        out = {k: v[t] for k, v in self.obs.items() if not isinstance(v, list)}
        out["instruction"] = list(self.obs["instruction"])
        out["task"] = list(self.obs["task"])
        return out  # type: ignore[return-value]

    @classmethod
    def from_episodes(cls, records: Sequence[EpisodeRecord]) -> Trajectories:
        """Stack episodes run with keep_steps=True into padded time-major tensors."""
        if not records or not records[0].samples:
            raise ValueError("Trajectories need episodes recorded with keep_steps=True")
        t_max = max(r.decision_steps for r in records)

        def pad(items: list, t: int) -> list:  # repeat the last real entry as padding
            return items + [items[-1]] * (t - len(items))

        obs: dict = {}
        for key, value in records[0].observations[0].items():
            if isinstance(value, list):
                obs[key] = [r.observations[0][key][0] for r in records]
            else:
                per_ep = [
                    np.concatenate(pad([o[key] for o in r.observations], t_max)) for r in records
                ]
                obs[key] = torch.as_tensor(np.stack(per_ep, axis=1))  # (T, B, ...)

        def stack_samples(get) -> torch.Tensor:
            per_ep = [torch.cat(pad([get(s) for s in r.samples], t_max)) for r in records]
            return torch.stack(per_ep, dim=1)  # (T, B, ...)

        actions = stack_samples(lambda s: s.actions)
        has_lp = records[0].samples[0].log_prob is not None
        log_probs = stack_samples(lambda s: s.log_prob) if has_lp else None
        extras = {
            k: stack_samples(lambda s, k=k: s.extras[k]) for k in records[0].samples[0].extras
        }
        shape = (t_max, len(records))
        rewards = torch.zeros(shape)
        valid = torch.zeros(shape, dtype=torch.bool)
        terminated = torch.zeros(shape, dtype=torch.bool)
        truncated = torch.zeros(shape, dtype=torch.bool)
        chunk_steps = torch.zeros(shape, dtype=torch.long)
        for b, r in enumerate(records):
            n = r.decision_steps
            rewards[:n, b] = torch.tensor(r.rewards)
            chunk_steps[:n, b] = torch.tensor(r.chunk_steps)
            valid[:n, b] = True
            terminated[n - 1, b] = r.terminated
            truncated[n - 1, b] = r.truncated
        final: dict = {}
        for key, value in records[0].final_observation.items():
            if isinstance(value, list):
                final[key] = [r.final_observation[key][0] for r in records]
            else:
                final[key] = torch.as_tensor(
                    np.concatenate([r.final_observation[key] for r in records])
                )
        return cls(
            obs=obs,  # type: ignore[arg-type]
            actions=actions,
            log_probs=log_probs,
            extras=extras,
            rewards=rewards,
            valid=valid,
            terminated=terminated,
            truncated=truncated,
            success=torch.tensor([r.success for r in records]),
            group=torch.tensor([r.spec.group for r in records]),
            final_obs=final,  # type: ignore[arg-type]
            frames=[np.stack(r.frames) for r in records]
            if all(r.frames for r in records)
            else None,
            tasks=[r.spec.task.name for r in records],
            init_ids=[r.spec.init_id for r in records],
            chunk_steps=chunk_steps,
        )
