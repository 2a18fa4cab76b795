"""`--base-load.*`: the command-line view of the real VLA families' loading options.

Each real family (a policy loaded from a published checkpoint with `--base-path`) declares its
own options dataclass beside its loader and names it in `load_options` (OpenVLALoadOptions in
policies/openvla.py, Pi0LoadOptions in policies/pi0.py, ...); its `from_checkpoint` takes an
instance of it, so a family sees only its own fields and no signature is matched.

Why a separate view: `vla-rl finetune`, `eval` and `bench-policy` need one set of flags for
whichever family `--base` / `--policy` names, and the schema must exist when their config
dataclass is defined (tyro and the YAML loader read it from the class), long before the family
is known, in code that must not import an adapter (`vla_rl.policies`) at module level. Building
the view from the families would import them all; a tyro subcommand per family would change
the flags (`--base-load.pi0.chain-std`). So the view repeats the fields as plain data, under
three rules that tests/test_policy_contract.py checks against every registered family:
* its fields are exactly the union of the families' option fields, with the same types;
* a field's default is the default every family that takes it shares; where they disagree it
  is None, meaning "the chosen family's own default";
* a field's docstring starts with the families that take it ("openvla, openvla-oft: ...").
A new family therefore touches its module and one POLICIES line, and this view only when it
brings a field (or a default) the others lack; the test names what is missing.

`for_family` turns the view into the family's options: the fields whose value differs from the
view's default are the ones that were set; one the family does not take is an error that lists
the family's options (a flag given with its default value cannot be told apart from an unset
one, and it changes nothing).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from vla_rl.core.config import ConfigError

T = TypeVar("T")


class LoadOptionError(ConfigError):
    """A `--base-load.*` flag the chosen family does not take; the message lists its options."""


def flag(field_name: str) -> str:
    return f"--base-load.{field_name.replace('_', '-')}"


@dataclass
class BaseLoadConfig:
    """How a real VLA checkpoint is loaded (`--base-load.*`); each family takes its own fields
    (README "Real VLA bases"), and setting one it does not take is an error listing its own."""

    unnorm_key: str | None = None
    """openvla, openvla-oft: the norm_stats dataset whose action statistics un-normalise the
    output (e.g. libero_spatial_no_noops). None: the only one (an error lists them if several)."""
    dtype: str = "auto"
    """openvla, openvla-oft, pi0, smolvla: auto (bfloat16 on a GPU that supports it, else
    float32: CPU bf16 matmuls are slow), float32 or bfloat16."""
    center_crop: bool = False
    """openvla, openvla-oft: crop the central 90% of the image area first (OpenVLA's LIBERO
    evaluation, for checkpoints trained with random-crop augmentation)."""
    num_images: int = 1
    """openvla-oft: cameras fed to the model (LIBERO OFT checkpoints: 2, third-person + wrist)."""
    chunk_size: int | None = None
    """openvla-oft: actions per chunk; None: OFT's constant for the platform (LIBERO 8)."""
    scale_head: str = "gaussian"
    """openvla-oft: with the L1 head, gaussian, laplace or none; the learned scale that gives
    the continuous head a likelihood for RL (World-Env's stochastic head)."""
    init_scale: float = 0.05
    """openvla-oft: the scale head's initial scale in the [-1, 1] action units (ours: small, so
    early samples stay near the L1 mean the checkpoint was trained to output)."""
    tokenizer: str | None = None
    """pi0, smolvla: a tokenizer directory, PaliGemma's for pi0, SmolVLM2's (config and
    tokenizer) for smolvla. None: the checkpoint directory (pi0) or config's vlm_model_name
    (smolvla)."""
    chain_std: float = 0.05
    """pi0, smolvla: noise std injected at each flow step for RL, in normalised action units."""
    num_steps: int | None = None
    """pi0, smolvla: Euler steps; None keeps the checkpoint's (10)."""

    def given(self) -> dict[str, Any]:
        """The fields set to something other than the view's default."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        }

    def for_family(self, family: str, options_cls: type[T]) -> T:
        """The family's options: its defaults, with the fields set here on top."""
        valid = [f.name for f in dataclasses.fields(options_cls)]  # type: ignore[arg-type]
        given = self.given()
        foreign = [name for name in given if name not in valid]
        if foreign:
            raise LoadOptionError(
                f"{', '.join(flag(n) for n in foreign)}: not an option of {family}; "
                f"{family} takes {', '.join(flag(n) for n in valid)}"
            )
        return options_cls(**given)


def family_options(family: str, options_cls: type[T], options: Any) -> T:
    """`options` as the family's own options: None (its defaults), an instance of its class,
    or the command line's BaseLoadConfig."""
    if options is None:
        return options_cls()
    if isinstance(options, BaseLoadConfig):
        return options.for_family(family, options_cls)
    if type(options) is not options_cls:
        raise TypeError(
            f"{family} takes {options_cls.__name__} or BaseLoadConfig options, "
            f"not {type(options).__name__}"
        )
    return options


def real_families() -> list[str]:
    """The registered policies loaded from a published checkpoint (their entry names a
    `load_options` class). Resolves every policy entry, i.e. imports each adapter module (cheap:
    they import torch, and their simulators and transformers only when an instance is built)."""
    from vla_rl.core.registry import POLICIES

    return [name for name in POLICIES.names() if POLICIES.get(name).load_options is not None]
