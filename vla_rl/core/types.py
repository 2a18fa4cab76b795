"""The data that flows between benchmarks, policies, the rollout engine and methods.

Shape glossary (used in every docstring and shape comment of the toolkit):
    B   parallel envs or samples         T   decision steps (one step = one action chunk)
    Ta  actions per chunk                Da  action dim
    K   candidates or group size         H, W image size
    Ds  proprio / state dim              Ncam cameras
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
import torch


class Observation(TypedDict, total=False):
    """A batch of observations, as every policy receives it.

    state:       float32 array (B, Ds). Meta-World: the 39-D goal-observable state; LIBERO: the
                 8-D proprio (eef pos 3, eef axis-angle 3, gripper qpos 2).
    image:       uint8 array (B, Ncam, H, W, 3), present only when the env renders cameras.
    instruction: list of B language instructions.
    task:        list of B task names (lets scripted or multi-task policies pick per-task logic).
    """

    state: np.ndarray
    image: np.ndarray
    instruction: list[str]
    task: list[str]


def obs_batch_size(obs: Observation) -> int:
    """B of an observation batch."""
    return len(obs["instruction"])


def index_obs(obs: Observation, idx: np.ndarray | list[int]) -> Observation:
    """Select the rows `idx` of every field (keeps the batch dimension)."""
    idx = np.asarray(idx, dtype=np.int64)
    out: dict[str, Any] = {}
    for key, value in obs.items():
        if isinstance(value, list):
            out[key] = [value[i] for i in idx]
        else:
            out[key] = value[idx]
    return out  # type: ignore[return-value]


def stack_obs(items: list[dict[str, Any]]) -> Observation:
    """Stack per-env observation dicts (each without the batch dim) into one batch."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = values if isinstance(values[0], str) else np.stack(values)
    return out  # type: ignore[return-value]


@dataclass
class ActionSample:
    """What a policy returns for a batch of B observations.

    actions:  float tensor (B, Ta, Da) in env units, ready to execute.
    log_prob: float tensor (B,) of the whole chunk's log-likelihood, or None for policies with no
              tractable likelihood (scripted experts).
    extras:   tensors with leading dim B holding whatever `log_prob` needs to re-score this sample
              later (token ids, the denoising chain, injected noise, features for a verifier).
    """

    actions: torch.Tensor
    log_prob: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.actions.shape[0])

    def index(self, idx: torch.Tensor | list[int]) -> ActionSample:
        """Rows `idx` of the sample (keeps the batch dimension)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ActionSample(
            actions=self.actions[idx],
            log_prob=None if self.log_prob is None else self.log_prob[idx],
            extras={k: v[idx] for k, v in self.extras.items()},
        )


@dataclass(frozen=True)
class TaskSpec:
    """One task of a benchmark, restricted to the initial states of one split.

    init_ids: identifiers of the initial states in this split, in their fixed evaluation order
        (Meta-World: reset seeds; LIBERO: indices into the task's official init-state file).
        The train and eval tuples of a task never share an id (checked by `check_disjoint`).
    max_steps: env-step horizon of an episode (env steps, not chunks), with its source stated by
        the benchmark that sets it.
    """

    benchmark: str
    name: str
    instruction: str
    split: str
    init_ids: tuple[int, ...]
    max_steps: int


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to run: a task, one of its initial states, and the group it belongs to.

    group: episodes with the same group id start from the same initial state (K rollouts per
        initial state, as GRPO needs); -1 when the caller does not group.
    noise_key: the key of the episode's random streams (vla_rl.core.noise), which the rollout
        engine sets on the spec a slot resets with; None: draws come from torch's global
        generator.
    """

    task: TaskSpec
    init_id: int
    group: int = -1
    noise_key: int | None = None
