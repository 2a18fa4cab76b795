"""The BasePolicy interface every base policy, finetuned policy and test-time wrapper implements."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from vla_rl.core.types import ActionSample, Observation, index_obs, obs_batch_size
from vla_rl.io.atomic import atomic_directory

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class BasePolicy(nn.Module, ABC):
    """A policy maps a batch of observations to a batch of action chunks.

    Policies are stateless: action queues, observation history and chunk execution live in the env
    wrappers (`ChunkedEnv`), so a stored `ActionSample` can always be re-scored with `log_prob`.

    Subclasses set `policy_type` (their registry name) and `chunk_size` (Ta), implement
    `sample_actions`, and, where the family has a tractable likelihood, `log_prob`.
    """

    policy_type: ClassVar[str] = "base"
    chunk_size: int = 1  # Ta: actions per chunk the env executes open-loop
    temperature: float = 1.0
    """Sampling temperature of stochastic sampling: token families divide their logits by it,
    chain families (flow, diffusion) multiply their transitions' std by it. `log_prob` scores
    under the same temperature, so ratios compare the distribution that was sampled (VLA-RL
    computes log-probs at its rollout temperature). Deterministic sampling ignores it."""

    deterministic_candidates_differ: ClassVar[bool] = False
    """Whether K candidates drawn with deterministic=True still differ: True for chain
    families (the noise-free ODE / DDIM from K different initial noises), False where
    deterministic sampling is an argmax (token families), so a reranker samples those."""

    @abstractmethod
    def sample_actions(self, obs: Observation, deterministic: bool = False) -> ActionSample:
        """Sample one action chunk per observation: actions (B, Ta, Da) in env units."""

    def sample_candidates(
        self,
        obs: Observation,
        num_candidates: int,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> ActionSample:
        """K candidate chunks per observation, as one sample of B * K rows, observation-major
        (row b * K + k is candidate k of observation b). Families override this to encode each
        observation once and share that prefix among its K candidates, and put the internal
        feature a test-time verifier scores in extras["feature"] (B * K, F).
        generator: draw the sampling noise from it as a bank shared by all observations (a
        fixed noise bank when re-seeded per call); None: fresh noise.
        The default is naive batching: every observation repeated K times through
        `sample_actions`, its encoding recomputed K times."""
        if generator is not None:
            raise ValueError(
                f"policy {self.policy_type!r} cannot sample from a fixed noise bank; "
                "use fresh noise"
            )
        return naive_candidates(self, obs, num_candidates, deterministic)

    def log_prob(self, obs: Observation, sample: ActionSample) -> torch.Tensor:
        """Log-likelihood (B,) of `sample` under the current weights, differentiable."""
        raise NotImplementedError(
            f"policy {self.policy_type!r} has no tractable log-likelihood; methods that update the "
            "policy's weights (ppo, grpo, srpo) need one, sampling-only methods (residual, taco) "
            "do not"
        )

    def log_prob_terms(
        self, obs: Observation, sample: ActionSample
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The parts `log_prob` adds up, for methods that choose their own reduction (sum or mean
        over dimensions and denoising steps, or one ratio per part): terms (B, N), where the
        policy's N parts are its action tokens or its chain's (denoising step, dim) pairs, and
        the entropy (B,) of the distributions they were drawn from, summed over the N parts.
        log_prob = terms.sum(-1) + a constant without parameters (the chain's initial noise)."""
        raise NotImplementedError(
            f"policy {self.policy_type!r} does not expose per-part log-probabilities; "
            "ppo, grpo and srpo need them"
        )

    def observation_features(self, obs: Observation) -> torch.Tensor:
        """The policy's own representation (B, F) of each observation (SRPO's `policy`
        trajectory encoder embeds rollouts with it)."""
        raise NotImplementedError(f"policy {self.policy_type!r} exposes no observation features")

    def wrap_env(self, venv: Any) -> Any:
        """The vector env this policy runs on: `venv` itself, or `venv` inside the env-side
        wrappers the policy's execution needs (a ResidualPolicy's base-action queue). Every
        caller that builds envs for a policy (evaluation, methods) passes them through here."""
        return venv

    @classmethod
    def for_benchmark(cls, benchmark: Any) -> BasePolicy:
        """Build this policy from its registry name for `benchmark` (no checkpoint)."""
        raise ValueError(
            f"policy {cls.policy_type!r} cannot be built from its name alone; "
            "pass a checkpoint directory"
        )

    # ---- what a registry entry offers besides building by name -------------------------------
    load_options: ClassVar[type | None] = None
    """The options dataclass of a family loaded from a published checkpoint in its own format
    (`--base <family> --base-path DIR`, flags `--base-load.*`, see vla_rl.core.load_options):
    its `from_checkpoint(directory, benchmark, options)` takes an instance. None: a native
    family, built by name or from one of our own checkpoint directories."""

    bounded_actions: ClassVar[bool] = True
    """Whether `sample_actions` keeps every action inside the env's action box. False for the
    families that de-standardise with a mean and std (pi0, SmolVLA: unbounded by
    construction); the benchmarks clip what they execute, and the contract test checks only
    that such actions are finite."""

    contract_benchmark: ClassVar[str | None] = None
    """The registered benchmark the policy contract test (tests/test_policy_contract.py) builds
    this family for. None: the test's toy benchmark (Da = 1, Ds = 2, one 20 x 20 camera), the
    fastest; a family that exists for one benchmark only names it (Meta-World's experts)."""

    @classmethod
    def contract_instance(cls, benchmark: Any, directory: Path) -> BasePolicy:
        """A small instance for the policy contract test, built for `benchmark`. `directory` is
        an empty scratch directory to write into (a tiny checkpoint). The default is
        `for_benchmark`; a family that only loads from a checkpoint overrides this with a tiny
        constructor or a tiny checkpoint in its published format, so every registered family
        is tested without a download."""
        return cls.for_benchmark(benchmark)

    # ---- persistence -------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments; `from_pretrained` calls `cls(**config)`."""
        return {}

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `config.json` (with "policy_type") and `model.safetensors`, atomically."""
        from safetensors.torch import save_file

        config = {"policy_type": self.policy_type, **self.get_config()}
        with atomic_directory(directory) as tmp:
            self.save_parts(tmp)
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
            state = {k: v.detach().contiguous().cpu() for k, v in self.weights_to_save().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))

    def save_parts(self, directory: Path) -> None:
        """Write what the checkpoint holds besides config and weights (a wrapper's base policy,
        say) into `directory`, the checkpoint being written. Nothing by default."""

    def weights_to_save(self) -> dict[str, torch.Tensor]:
        """The tensors of model.safetensors: the whole state dict by default."""
        return self.state_dict()

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> BasePolicy:
        from safetensors.torch import load_file

        directory = Path(directory)
        config = json.loads((directory / CONFIG_FILE).read_text())
        config.pop("policy_type", None)
        policy = cls(**config)
        weights = directory / WEIGHTS_FILE
        if weights.exists():
            policy.load_state_dict(load_file(str(weights)))
        return policy


def naive_candidates(
    policy: BasePolicy, obs: Observation, num_candidates: int, deterministic: bool = False
) -> ActionSample:
    """K candidates per observation by naive batching: each observation repeated K times
    (observation-major) and sampled as B * K independent rows, so the policy encodes every
    observation K times. The baseline prefix sharing is measured against."""
    rows = torch.arange(obs_batch_size(obs)).repeat_interleave(num_candidates)
    return policy.sample_actions(index_obs(obs, rows.numpy()), deterministic)


VLA_RL_FILE = "vla_rl.json"  # beside a real-format checkpoint we saved: policy type and options


def load_policy(
    name_or_dir: str,
    benchmark: Any | None = None,
    base_path: str | None = None,
    options: Any = None,
) -> BasePolicy:
    """A policy from a registry name (built for `benchmark`), a checkpoint directory, or a real
    VLA family name with `base_path`, the directory of a published checkpoint in that family's
    own format. `options`: the family's own options (an instance of its `load_options` class),
    or the command line's BaseLoadConfig, whose set fields must all be the family's; None: the
    family's defaults."""
    from vla_rl.core.load_options import family_options, real_families
    from vla_rl.core.registry import POLICIES, UnknownNameError

    entry = POLICIES.get(name_or_dir) if name_or_dir in POLICIES else None
    options_cls = None if entry is None else entry.load_options
    if base_path is not None or options_cls is not None:
        if options_cls is None:
            raise UnknownNameError(
                f"--base-path loads a published checkpoint of a real VLA family; {name_or_dir!r} "
                f"is not one (valid choices: {', '.join(real_families())})"
            )
        if base_path is None or not Path(base_path).is_dir():
            raise FileNotFoundError(
                f"--base {name_or_dir} needs --base-path <checkpoint directory>"
                + ("" if base_path is None else f"; {base_path!r} is not a directory")
            )
        own = family_options(name_or_dir, options_cls, options)
        return entry.from_checkpoint(base_path, benchmark, own)
    path = Path(name_or_dir)
    if (path / VLA_RL_FILE).is_file():
        policy_type = json.loads((path / VLA_RL_FILE).read_text())["policy_type"]
        return POLICIES.get(policy_type).from_pretrained(path)
    if (path / CONFIG_FILE).is_file():
        policy_type = json.loads((path / CONFIG_FILE).read_text()).get("policy_type")
        if policy_type is None:
            raise ValueError(f"{path / CONFIG_FILE} has no 'policy_type' field")
        return POLICIES.get(policy_type).from_pretrained(path)
    if path.exists() or "/" in name_or_dir:
        raise FileNotFoundError(
            f"{name_or_dir!r} is not a checkpoint directory (no {CONFIG_FILE} inside); "
            f"registered policies: {', '.join(POLICIES.names())}"
        )
    if entry is None:
        raise UnknownNameError(
            f"unknown policy {name_or_dir!r}; valid choices: {', '.join(POLICIES.names())} "
            "or a checkpoint directory"
        )
    return entry.for_benchmark(benchmark)
