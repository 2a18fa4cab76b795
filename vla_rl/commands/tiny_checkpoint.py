"""`vla-rl tiny-checkpoint`: a tiny random-weight checkpoint of a real VLA family, in that
family's published on-disk format, for trying `--base <family> --base-path` and for CPU timing.

Each family writes its own (its `write_tiny_checkpoint`, beside its loader:
policies/openvla_tiny.py, pi0_tiny.py, smolvla_tiny.py), found through the POLICIES registry,
so a new family needs nothing here. Nothing is downloaded; the statistics are made up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vla_rl.core.config import ConfigError, parse_cli


@dataclass
class TinyCheckpointConfig:
    """`vla-rl tiny-checkpoint`: write a tiny random-weight checkpoint of a real VLA family in
    its published on-disk format (for trying `--base <family> --base-path` and timing)."""

    family: str = "openvla"
    """A real VLA family: openvla, openvla-oft, pi0 or smolvla (the registered policies that
    load from a published checkpoint)."""
    output_dir: str = "runs/tiny-checkpoints/openvla"
    """Directory to write (must not exist yet)."""
    action_dim: int = 7
    """Da of the made-up dataset statistics (7: LIBERO; 4: Meta-World)."""
    state_dim: int = 8
    """Ds of the proprio statistics (8: LIBERO; 39: Meta-World)."""


def write_tiny_checkpoint(cfg: TinyCheckpointConfig) -> Path:
    from vla_rl.core.load_options import real_families
    from vla_rl.core.registry import POLICIES, check_choice

    check_choice("family", cfg.family, real_families())
    if cfg.action_dim < 1 or cfg.state_dim < 1:
        raise ConfigError("--action-dim and --state-dim must be >= 1")
    family = POLICIES.get(cfg.family)
    return family.write_tiny_checkpoint(cfg.output_dir, cfg.action_dim, cfg.state_dim)


def main(args: list[str]) -> int:
    cfg = parse_cli(TinyCheckpointConfig, args, prog="vla-rl tiny-checkpoint",
                    description=TinyCheckpointConfig.__doc__ or "")  # fmt: skip
    out = write_tiny_checkpoint(cfg)
    print(f"wrote a tiny {cfg.family} checkpoint to {out}; load it with "
          f"--base {cfg.family} --base-path {out}")  # fmt: skip
    return 0
