"""The BasePolicy interface every base policy, finetuned policy and test-time wrapper implements."""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
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

    def fsdp_units(self) -> list[torch.nn.Module]:
        """Submodules that FSDP may gather one at a time (vla_rl.rl.fsdp.shard_policy): blocks
        whose weights only their own `forward` reads. None by default: the whole policy is
        gathered for each call of its compute methods, and sharded between them."""
        return []

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
        """The policy saved in `directory` by `save_pretrained`, every file checked before it is
        trusted (see `build_from_config` and `load_weights`); PolicyCheckpointError otherwise."""
        directory = Path(directory)
        config = read_json_object(directory / CONFIG_FILE)
        config.pop("policy_type", None)
        policy = build_from_config(cls, config, directory / CONFIG_FILE)
        load_weights(policy, directory)
        return policy


# ---- checking a checkpoint before trusting it ------------------------------------------------
class PolicyCheckpointError(ValueError):
    """A policy checkpoint directory that cannot be loaded. The message is one line naming the
    file, what is wrong with it and what was expected (a ValueError, so the CLI prints it as a
    usage error instead of a traceback)."""


def one_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (torch and safetensors write several),
    or its type name when it has none."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
               int: "an integer", float: "a number", type(None): "null"}  # fmt: skip


def json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; PolicyCheckpointError when it does not parse or is not an
    object (a list, a number), FileNotFoundError when it is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; expected a checkpoint's JSON file there")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PolicyCheckpointError(
            f"{path}: not valid JSON ({one_line(err)}); expected the JSON object "
            "save_pretrained writes"
        ) from err
    if not isinstance(value, dict):
        raise PolicyCheckpointError(
            f"{path}: holds {json_type(value)}; expected a JSON object of named fields"
        )
    return value


def _hint_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a constructor annotation. True for any annotation beyond the
    simple forms checked here: a guess must never refuse a valid checkpoint (the constructor's
    own TypeError is the backstop)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    # bool is an int subclass in Python but a different JSON type: `true` is no layer width.
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # JSON writes 1.0 as 1 when a float field held a whole number
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (list, tuple) or origin in (list, tuple, Sequence):
        # JSON has no tuples: save_pretrained writes them as arrays.
        if not isinstance(value, list):
            return False
        item = args[0] if args and (origin is not tuple or args[-1] is Ellipsis) else None
        return item is None or all(_fits(v, item) for v in value)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True


def _annotations(cls: type) -> dict[str, Any]:
    """The constructor's resolved annotations; {} where they cannot be resolved (a name only
    imported under TYPE_CHECKING), so those fields go unchecked rather than refused."""
    target = cls if dataclasses.is_dataclass(cls) else cls.__init__
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - any failure to resolve just skips the type check
        return {}


def check_fields(
    cls: type, config: dict[str, Any], path: Path, skip: int = 0, what: str = ""
) -> None:
    """Check a config's fields against `cls`'s constructor: no unknown field, every required one
    present, each value of the annotated type where that is cheap to tell. skip: leading
    constructor parameters the loader passes itself (a residual policy's base). what: how the
    message names the thing being built."""
    what = what or f"a {getattr(cls, 'policy_type', cls.__name__)!r} policy"
    params = list(inspect.signature(cls).parameters.values())[skip:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = [p for p in params if p.kind in kinds]
    valid = ", ".join(p.name for p in named)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        unknown = [k for k in config if k not in {p.name for p in named}]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise PolicyCheckpointError(
                f"{path}: unknown field {unknown[0]!r}{more} for {what}; valid fields: {valid}"
            )
    missing = [p.name for p in named if p.default is p.empty and p.name not in config]
    if missing:
        raise PolicyCheckpointError(
            f"{path}: missing required field(s) {', '.join(missing)} for {what}; "
            f"valid fields: {valid}"
        )
    hints = _annotations(cls)
    for name, value in config.items():
        if name in hints and not _fits(value, hints[name]):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise PolicyCheckpointError(
                f"{path}: field {name!r} is {json_type(value)} ({shown}); expected "
                f"{_hint_name(hints[name])}"
            )


def build_from_config(cls: type, config: dict[str, Any], path: Path, *args: Any) -> Any:
    """`cls(*args, **config)` after `check_fields`; what the constructor still rejects (a value
    out of range, a type the annotations do not tell) becomes one PolicyCheckpointError line."""
    check_fields(cls, config, path, skip=len(args))
    try:
        return cls(*args, **config)
    except (TypeError, ValueError, RuntimeError) as err:
        if isinstance(err, PolicyCheckpointError):
            raise
        raise PolicyCheckpointError(
            f"{path}: its fields do not build a {getattr(cls, 'policy_type', cls.__name__)!r} "
            f"policy ({one_line(err)})"
        ) from err


# Magic numbers of the pickle-based formats torch.save writes (a zip archive holding a pickle,
# or, in its legacy format, a bare pickle): refused by their first bytes, never parsed further.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"  # the PROTO opcode every pickle of protocol >= 2 starts with


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, parsed by safetensors (raw tensors and a JSON header:
    nothing in it can run code). A pickle in its place (torch.save's output) is refused by its
    first bytes without being unpickled, since unpickling a crafted file runs arbitrary code;
    an empty, truncated or corrupt file becomes one PolicyCheckpointError line."""
    from safetensors.torch import load_file

    with unreadable_as_one_line(path):
        return load_file(str(path))


@contextmanager
def unreadable_as_one_line(path: Path) -> Iterator[None]:
    """Refuse `path` unless it may be a safetensors file (not empty, not a pickle: checked by
    its first bytes, never unpickled), then run the block that parses it, turning safetensors'
    errors (truncated, corrupt) into one PolicyCheckpointError line."""
    from safetensors import SafetensorError

    size = path.stat().st_size
    if size == 0:
        raise PolicyCheckpointError(
            f"{path}: empty (0 bytes); expected a safetensors file of the policy's tensors "
            "(an interrupted copy?)"
        )
    with path.open("rb") as f:
        head = f.read(9)
    # A safetensors file is an 8-byte header length, then its JSON header: "{" at byte 8. Its
    # first byte may well be 0x80 (a header of 128 + 256 n bytes), so that alone is no pickle.
    looks_safetensors = head[8:9] == b"{"
    if not looks_safetensors and (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        kind = "a zip archive (torch.save's format)" if head.startswith(_ZIP_MAGIC) else "a pickle"
        raise PolicyCheckpointError(
            f"{path}: is {kind}, not safetensors; refused unread, since unpickling can run code "
            "(expected the safetensors file save_pretrained writes)"
        )
    try:
        yield
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, PolicyCheckpointError):
            raise
        raise PolicyCheckpointError(
            f"{path}: not a readable safetensors file ({one_line(err)}, {size} bytes); expected "
            "the file save_pretrained writes (truncated by an interrupted copy?)"
        ) from err


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(n) for n in t.shape) + ")"


def check_state(
    expected: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    path: Path | str,
    what: str,
    allow_missing: tuple[str, ...] = (),
) -> None:
    """Refuse `state` unless it holds exactly the `expected` names, each with the expected
    shape, and every floating tensor is finite: one PolicyCheckpointError line naming the first
    offenders and how many there are. allow_missing: name suffixes a checkpoint may omit."""
    missing = [k for k in expected if k not in state and not k.endswith(allow_missing)]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensor(s) (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {k}: {_shape(state[k])} in the "
                         f"file, {_shape(expected[k])} expected)")  # fmt: skip
        raise PolicyCheckpointError(f"{path}: does not match {what}: " + "; ".join(parts))
    for k, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            raise PolicyCheckpointError(
                f"{path}: tensor {k!r} holds {n} NaN/inf value(s); expected finite weights "
                "(a diverged training run?)"
            )


def load_weights(policy: BasePolicy, directory: Path) -> None:
    """Load `directory`'s model.safetensors into `policy`, checked first: it must exist when the
    policy has tensors to save (its normaliser statistics are buffers, so native families always
    do; a policy without any needs no file), parse, and hold exactly `weights_to_save()`'s names
    and shapes, every value finite."""
    expected = policy.weights_to_save()
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        if not expected:
            return
        raise PolicyCheckpointError(
            f"{path}: missing; a {policy.policy_type!r} policy has {len(expected)} tensors to load "
            f"(e.g. {next(iter(expected))}), expected in the {WEIGHTS_FILE} save_pretrained writes"
        )
    state = read_safetensors(path)
    check_state(expected, state, path, f"the {policy.policy_type!r} policy config.json describes")
    # Names beyond weights_to_save (a residual policy's base) were loaded with their own files.
    policy.load_state_dict(state, strict=False)


def naive_candidates(
    policy: BasePolicy, obs: Observation, num_candidates: int, deterministic: bool = False
) -> ActionSample:
    """K candidates per observation by naive batching: each observation repeated K times
    (observation-major) and sampled as B * K independent rows, so the policy encodes every
    observation K times. The baseline prefix sharing is measured against. A keyed batch
    (vla_rl.core.noise) gives each candidate a key of its own, derived from its row's."""
    from vla_rl.core.noise import NOISE_KEY, derive, noise_keys

    rows = torch.arange(obs_batch_size(obs)).repeat_interleave(num_candidates)
    repeated = index_obs(obs, rows.numpy())
    keys = noise_keys(obs)
    if keys is not None:
        repeated[NOISE_KEY] = np.array(  # type: ignore[typeddict-unknown-key]
            [derive(key, "candidate", k) for key in keys.tolist() for k in range(num_candidates)],
            dtype=np.int64,
        )
    return policy.sample_actions(repeated, deterministic)


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
    for file in (VLA_RL_FILE, CONFIG_FILE):
        if (path / file).is_file():
            return saved_family(path / file).from_pretrained(path)
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


def saved_family(path: Path) -> Any:
    """The registered family a checkpoint's config.json (or vla_rl.json) names by its
    policy_type; PolicyCheckpointError when the file does not name a loadable one."""
    from vla_rl.core.registry import POLICIES

    policy_type = read_json_object(path).get("policy_type")
    if not isinstance(policy_type, str):
        raise PolicyCheckpointError(
            f"{path}: " + ("has no 'policy_type' field" if policy_type is None
                           else f"'policy_type' is {json_type(policy_type)}")
            + f"; expected one of: {', '.join(POLICIES.names())}"
        )  # fmt: skip
    if policy_type not in POLICIES:
        raise PolicyCheckpointError(
            f"{path}: unknown policy_type {policy_type!r}; valid choices: "
            f"{', '.join(POLICIES.names())}"
        )
    family = POLICIES.get(policy_type)
    if not hasattr(family, "from_pretrained"):  # a bundled checkpoint's name, not a family
        raise PolicyCheckpointError(
            f"{path}: policy_type {policy_type!r} names a bundled checkpoint, not a policy "
            "family; expected the family it was saved as (e.g. flow)"
        )
    return family
