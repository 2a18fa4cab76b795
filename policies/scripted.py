"""`--policy scripted`: the benchmark's own scripted experts (Meta-World's shipped controllers,
or the LIBERO experts planned from privileged object poses)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vla_rl.core.policy import CONFIG_FILE, BasePolicy, read_json_object


class ScriptedPolicy(BasePolicy):
    """The registry entry: `for_benchmark` builds the experts of the benchmark at hand."""

    policy_type = "scripted"
    chunk_size = 1
    contract_benchmark = "metaworld"  # tests/test_libero.py runs the LIBERO experts

    @classmethod
    def for_benchmark(cls, benchmark: Any) -> BasePolicy:
        name = getattr(benchmark, "name", None) or "metaworld"
        if name == "metaworld":
            from vla_rl.policies.scripted_metaworld import ScriptedMetaWorldPolicy

            return ScriptedMetaWorldPolicy()
        if name.startswith("libero"):
            from vla_rl.policies.scripted_libero import ScriptedLiberoPolicy

            return ScriptedLiberoPolicy()
        raise ValueError(
            f"no scripted experts for benchmark {name!r}; they exist for metaworld and the "
            "LIBERO suites"
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> BasePolicy:
        """A saved scripted policy: the LIBERO experts' config names waypoint_noise."""
        if "waypoint_noise" in read_json_object(Path(directory) / CONFIG_FILE):
            from vla_rl.policies.scripted_libero import ScriptedLiberoPolicy

            return ScriptedLiberoPolicy.from_pretrained(directory)
        from vla_rl.policies.scripted_metaworld import ScriptedMetaWorldPolicy

        return ScriptedMetaWorldPolicy.from_pretrained(directory)
