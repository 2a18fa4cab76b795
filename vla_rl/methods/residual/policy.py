"""ResidualPolicy: a frozen base policy plus a small learned per-step residual (ResFiT).

    a = clamp(a_base + residual(s, a_base), -1, 1),   residual = action_scale * tanh(MLP(...))

in the normalised action space [-1, 1]^Da (the env's action box mapped linearly), so
`action_scale` and the exploration noise mean the same thing on every benchmark. The MLP's last
layer starts at zero, so an untrained ResidualPolicy acts exactly like its base.

The base is a black box used only through `sample_actions`: its chunks are executed open-loop by
a `BaseActionQueue` (see `wrap_env`), which puts the current base action into the observation,
and the residual corrects every control step inside the chunk. This class is itself a BasePolicy
(chunk size 1), so `vla-rl eval --policy <run>/policy` evaluates it like any other.

Features seen by the actor (and the method's critics): the standardised state (Ds), a one-hot of
the task among the tasks it was trained on (all zeros for any other task), and the normalised
base action (Da).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vla_rl.core import noise
from vla_rl.core.policy import (
    CONFIG_FILE,
    BasePolicy,
    PolicyCheckpointError,
    build_from_config,
    check_fields,
    load_policy,
    load_weights,
    read_json_object,
)
from vla_rl.core.types import ActionSample, Observation

BASE_DIR = "base"


def mlp(inputs: int, hidden: int, outputs: int, layers: int = 2) -> nn.Sequential:
    """`layers` x (Linear, LayerNorm, ReLU) then a Linear head: ResFiT's actor/critic trunk
    (LayerNorm keeps off-policy value learning stable at high update-to-data ratios)."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(inputs if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.ReLU()]
    mods.append(nn.Linear(hidden, outputs))
    return nn.Sequential(*mods)


class ResidualPolicy(BasePolicy):
    policy_type = "residual"
    chunk_size = 1  # the residual acts at every control step

    def __init__(
        self,
        base: BasePolicy,
        state_dim: int,
        action_dim: int,
        task_names: list[str],
        action_low: list[float],
        action_high: list[float],
        hidden: int = 256,
        action_scale: float = 0.1,
        exploration_std: float = 0.05,
        base_deterministic: bool = True,
    ):
        """action_scale: bound of the residual in normalised units (ResFiT: 0.1).
        exploration_std: Gaussian noise added when sampling non-deterministically (ResFiT 0.05).
        base_deterministic: query the base with deterministic=True (see BaseActionQueue)."""
        super().__init__()
        self.config = dict(
            state_dim=state_dim, action_dim=action_dim, task_names=list(task_names),
            action_low=[float(x) for x in action_low], action_high=[float(x) for x in action_high],
            hidden=hidden, action_scale=action_scale, exploration_std=exploration_std,
            base_deterministic=base_deterministic,
        )  # fmt: skip
        self.base = base.requires_grad_(False)
        self.action_dim = action_dim
        self.task_index = {name: i for i, name in enumerate(task_names)}
        self.action_scale = action_scale
        self.exploration_std = exploration_std
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        self.register_buffer("action_low", torch.tensor(action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.tensor(action_high, dtype=torch.float32))
        self.feature_dim = state_dim + len(task_names) + action_dim
        self.actor = mlp(self.feature_dim, hidden, action_dim)
        nn.init.zeros_(self.actor[-1].weight)  # residual is exactly 0 at the start (ResFiT)
        nn.init.zeros_(self.actor[-1].bias)

    @classmethod
    def contract_instance(cls, benchmark: Any, directory: Path) -> ResidualPolicy:
        """For the policy contract test: a residual on the tiny flow base (Ta = 2, so the
        base-action queue runs chunks), its zero-initialised last layer randomised so that the
        residual, and its save/load round trip, are not trivially 0."""
        from vla_rl.core.registry import POLICIES

        base = POLICIES.get("flow").contract_instance(benchmark, directory)
        da = benchmark.action_dim
        policy = cls(base, benchmark.state_dim, da, benchmark.task_names(), [-1.0] * da,
                     [1.0] * da, hidden=32)  # fmt: skip
        nn.init.normal_(policy.actor[-1].weight, std=0.5)
        return policy

    def get_config(self) -> dict[str, Any]:
        return dict(self.config)

    # ---- spaces -------------------------------------------------------------------------------
    def fit_state_stats(self, states: np.ndarray, min_std: float = 1e-2) -> None:
        """Standardise states with these statistics (ResFiT standardises proprio). min_std keeps
        dims that barely vary in the data (Meta-World pads unused object slots) from exploding."""
        self.state_mean.copy_(torch.as_tensor(states.mean(0), dtype=torch.float32))
        self.state_std.copy_(torch.as_tensor(states.std(0), dtype=torch.float32).clamp_min(min_std))

    def to_unit(self, action: torch.Tensor) -> torch.Tensor:
        """Env units -> [-1, 1]."""
        return 2 * (action - self.action_low) / (self.action_high - self.action_low) - 1

    def from_unit(self, unit: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> env units."""
        return self.action_low + (unit + 1) * (self.action_high - self.action_low) / 2

    def features(self, state: torch.Tensor, task: torch.Tensor, base_unit: torch.Tensor):
        """(B, feature_dim) from raw states (B, Ds), task indices (B,) (-1 = unknown task) and
        normalised base actions (B, Da)."""
        z = ((state - self.state_mean) / self.state_std).clamp(-10, 10)
        onehot = torch.zeros(len(task), len(self.task_index), device=state.device)
        known = task >= 0
        onehot[known, task[known]] = 1.0
        return torch.cat([z, onehot, base_unit], -1)

    def task_ids(self, names: list[str]) -> torch.Tensor:
        return torch.tensor([self.task_index.get(n, -1) for n in names], dtype=torch.long)

    def residual(self, features: torch.Tensor) -> torch.Tensor:
        """The deterministic residual (B, Da) in normalised units, within +-action_scale."""
        return self.action_scale * torch.tanh(self.actor(features))

    # ---- BasePolicy ---------------------------------------------------------------------------
    def wrap_env(self, venv):
        from vla_rl.methods.residual.base_action_queue import BaseActionQueue

        return BaseActionQueue(venv, self.base, self.config["base_deterministic"])

    def sample_actions(self, obs: Observation, deterministic: bool = False) -> ActionSample:
        if "base_action" not in obs:
            raise ValueError(
                "ResidualPolicy needs obs['base_action']: run it on `policy.wrap_env(venv)` "
                "(evaluate() and the rollout helpers do this)"
            )
        state = torch.as_tensor(obs["state"], dtype=torch.float32)
        base_unit = self.to_unit(torch.as_tensor(obs["base_action"], dtype=torch.float32))
        residual = self.residual(self.features(state, self.task_ids(obs["task"]), base_unit))
        if not deterministic and self.exploration_std > 0:
            keys = noise.noise_keys(obs)  # each row's own stream (vla_rl.core.noise)
            draw = noise.standard_normal(keys, len(residual), residual.shape[1:], "residual")
            residual = residual + self.exploration_std * draw
        unit = (base_unit + residual).clamp(-1, 1)
        return ActionSample(
            actions=self.from_unit(unit)[:, None],  # (B, 1, Da)
            extras={"base_action": base_unit, "residual": residual},
        )

    # ---- persistence: the base is saved whole inside, so a run directory stands alone --------
    def save_parts(self, directory: Path) -> None:
        self.base.save_pretrained(directory / BASE_DIR)

    def weights_to_save(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("base.")}

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ResidualPolicy:
        """The saved residual policy: its base (checked by load_policy) from the base/ folder
        inside, then its own config.json and model.safetensors, checked as every native
        family's (`build_from_config`, `load_weights`: the base's tensors are not expected)."""
        directory = Path(directory)
        config = read_json_object(directory / CONFIG_FILE)
        config.pop("policy_type", None)
        base_dir = directory / BASE_DIR
        if not base_dir.is_dir():
            raise PolicyCheckpointError(
                f"{base_dir}: missing; a residual policy checkpoint holds its base policy there"
            )
        # The fields are checked before the base loads, so a bad config.json fails fast.
        check_fields(cls, config, directory / CONFIG_FILE, skip=1)
        policy = build_from_config(cls, config, directory / CONFIG_FILE, load_policy(str(base_dir)))
        load_weights(policy, directory)
        return policy
