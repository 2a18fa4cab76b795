"""Every YAML in configs/ parses with the config of the command its name starts with (a renamed
field or a typo in a shipped config fails here, not on a user's machine)."""

from pathlib import Path

import pytest

from vla_rl.core.config import parse_cli

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_parses(path):
    from vla_rl.commands.eval import EvalConfig
    from vla_rl.commands.finetune import FinetuneConfig

    command = path.name.split("_")[0]
    cls = {"eval": EvalConfig, "finetune": FinetuneConfig}[command]
    cfg = parse_cli(cls, ["--config", str(path)], prog=f"vla-rl {command}")
    assert cfg.benchmark in path.name


def test_there_are_configs():
    assert len(CONFIGS) >= 3
