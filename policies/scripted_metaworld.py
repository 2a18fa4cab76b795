"""Meta-World's shipped per-task expert controllers wrapped as a BasePolicy (`--policy scripted`).

They are the upper reference on Meta-World (about 98% success) and the demonstration source for
behaviour cloning. They read the goal position from the state, so they need Meta-World's
goal-observable state, which is what the `metaworld` benchmark gives. Closed-loop: Ta = 1.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from vla_rl.core import noise
from vla_rl.core.policy import BasePolicy
from vla_rl.core.types import ActionSample, Observation


class ScriptedMetaWorldPolicy(BasePolicy):
    policy_type = "scripted"
    chunk_size = 1
    contract_benchmark = "metaworld"  # the experts exist for Meta-World's tasks only

    def __init__(self, action_noise: float = 0.0):
        """action_noise: std of Gaussian noise added to every action (then clipped to [-1, 1]);
        0 gives the expert itself, > 0 gives noisier, more diverse demonstrations."""
        super().__init__()
        from metaworld.policies import ENV_POLICY_MAP

        self.action_noise = action_noise
        self._experts = {name: cls() for name, cls in ENV_POLICY_MAP.items()}

    @classmethod
    def for_benchmark(cls, benchmark: Any) -> ScriptedMetaWorldPolicy:
        if benchmark is not None and getattr(benchmark, "name", None) != "metaworld":
            raise ValueError(
                "the scripted policy exists only for the metaworld benchmark, "
                f"not {benchmark.name!r}"
            )
        return cls()

    def get_config(self) -> dict[str, Any]:
        return {"action_noise": self.action_noise}

    def sample_actions(self, obs: Observation, deterministic: bool = False) -> ActionSample:
        actions = []
        with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips anyway
            warnings.simplefilter("ignore")
            for task, state in zip(obs["task"], obs["state"]):
                if task not in self._experts:
                    raise ValueError(f"no scripted expert for task {task!r}")
                actions.append(self._experts[task].get_action(np.asarray(state, np.float64)))
        acts = torch.as_tensor(np.stack(actions), dtype=torch.float32)[:, None]  # (B, Ta=1, Da)
        if self.action_noise > 0 and not deterministic:
            # Each row's own stream (vla_rl.core.noise): the same demo whatever the batch.
            draw = noise.standard_normal(
                noise.noise_keys(obs), len(acts), acts.shape[1:], "scripted"
            )
            acts = acts + self.action_noise * draw
        # The experts' gains push raw actions far outside the action box (up to about +-10);
        # Meta-World clips them. Return what the env executes, so demonstrations record it.
        return ActionSample(actions=acts.clamp(-1.0, 1.0), log_prob=None)
