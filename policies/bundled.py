"""Base-policy checkpoints that ship inside the package, loadable by name anywhere a policy is
named (`vla-rl eval --policy metaworld-flow`). Each one's directory holds the usual
config.json + model.safetensors, plus README.md with the commands that reproduce it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vla_rl

# The checkpoints ship as package data of `vla_rl` itself (pyproject.toml), beside its __init__.
CHECKPOINTS = Path(vla_rl.__file__).parent / "checkpoints"


@dataclass(frozen=True)
class BundledCheckpoint:
    """A registry entry that loads a shipped checkpoint (the registry's entry protocol:
    for_benchmark, contract_instance, contract_benchmark, load_options)."""

    name: str
    benchmark: str  # the benchmark it was trained for (its state and action spaces)
    load_options = None  # loads our own format, not a published one (BasePolicy.load_options)

    @property
    def path(self) -> Path:
        return CHECKPOINTS / self.name

    @property
    def contract_benchmark(self) -> str:
        """The policy contract test runs it where it was trained."""
        return self.benchmark

    def contract_instance(self, benchmark: Any, directory: Path):
        """The shipped checkpoint itself: the contract test checks what users load."""
        return self.for_benchmark(benchmark)

    def for_benchmark(self, benchmark: Any):
        from vla_rl.core.policy import load_policy

        # A learned world model of a benchmark's tasks (--benchmark worldmodel) has that
        # benchmark's spaces: its policies run in it as they are.
        names = {getattr(benchmark, "name", None), getattr(benchmark, "source_benchmark", None)}
        if benchmark is not None and self.benchmark not in names:
            raise ValueError(
                f"policy {self.name!r} was trained for {self.benchmark!r}, not {benchmark.name!r}"
            )
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"bundled checkpoint {self.name!r} is missing from {self.path}")
        return load_policy(str(self.path))


METAWORLD_FLOW = BundledCheckpoint("metaworld-flow", "metaworld")
METAWORLD_TOKENVLA = BundledCheckpoint("metaworld-tokenvla", "metaworld")
LIBERO_SPATIAL_STATE = BundledCheckpoint("libero-spatial-state", "libero_spatial")
