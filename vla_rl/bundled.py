"""Base-policy checkpoints that ship inside the package, loadable by name anywhere a policy is
named (`vla-rl eval --policy metaworld-flow`). Each one's directory holds the usual
config.json + model.safetensors, plus README.md with the commands that reproduce it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINTS = Path(__file__).parent / "checkpoints"


@dataclass(frozen=True)
class BundledCheckpoint:
    name: str
    benchmark: str  # the benchmark it was trained for (its state and action spaces)

    @property
    def path(self) -> Path:
        return CHECKPOINTS / self.name

    def for_benchmark(self, benchmark: Any):
        from vla_rl.policy import load_policy

        if benchmark is not None and benchmark.name != self.benchmark:
            raise ValueError(
                f"policy {self.name!r} was trained for {self.benchmark!r}, not {benchmark.name!r}"
            )
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"bundled checkpoint {self.name!r} is missing from {self.path}")
        return load_policy(str(self.path))


METAWORLD_FLOW = BundledCheckpoint("metaworld-flow", "metaworld")
METAWORLD_TOKENVLA = BundledCheckpoint("metaworld-tokenvla", "metaworld")
