"""Hand-checked small pieces: Wilson intervals, registries, atomic writes, config overrides."""

import json
from dataclasses import dataclass, field

import pytest

from vla_rl.core.config import ConfigError, apply_overrides, load_yaml_config, parse_cli
from vla_rl.core.registry import Registry, UnknownNameError, check_choice
from vla_rl.evaluation.stats import wilson_interval
from vla_rl.io.atomic import atomic_directory, atomic_write_json


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [  # values computed by hand from the Wilson formula with z = 1.959964
        (5, 10, 0.236593, 0.763407),
        (0, 10, 0.0, 0.277533),
        (10, 10, 0.722467, 1.0),
        (49, 50, 0.895046, 0.996460),
    ],
)
def test_wilson_interval_matches_hand_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-5)
    assert hi == pytest.approx(high, abs=1e-5)


def test_wilson_interval_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_registry_is_lazy_and_lists_choices():
    reg = Registry("widget")
    reg.register("json-dumps", "json:dumps")
    reg.register("direct", len)
    assert reg.get("direct") is len
    assert reg.get("json-dumps") is json.dumps  # imported on first use
    with pytest.raises(UnknownNameError, match="valid choices: json-dumps, direct"):
        reg.get("nope")
    with pytest.raises(ValueError):
        reg.register("direct", len)
    with pytest.raises(UnknownNameError, match="valid choices: a, b"):
        check_choice("mode", "c", ["a", "b"])


def test_core_registries_resolve_without_importing_adapters_first():
    import sys

    from vla_rl.core.registry import BENCHMARKS, POLICIES

    assert "metaworld" in BENCHMARKS.names() and "libero_spatial" in BENCHMARKS.names()
    assert "scripted" in POLICIES.names()
    assert BENCHMARKS.get("metaworld").__name__ == "MetaWorldBenchmark"
    assert "vla_rl.benchmarks.metaworld" in sys.modules


def test_atomic_json_and_directory(tmp_path):
    path = tmp_path / "out" / "r.json"
    atomic_write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left
    assert path.stat().st_mode & 0o044  # readable by others, like a plain write (umask 022)

    ckpt = tmp_path / "ckpt"
    with atomic_directory(ckpt) as tmp:
        (tmp / "w.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(ckpt) as tmp:
            (tmp / "w.txt").write_text("half-written v2")
            raise RuntimeError("killed mid-write")
    assert (ckpt / "w.txt").read_text() == "v1"  # the old checkpoint survives
    assert ckpt.stat().st_mode & 0o055  # not left private by mkdtemp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]


@dataclass
class Inner:
    size: int = 3
    """a size"""


@dataclass
class Outer:
    name: str = "a"
    """a name"""
    items: tuple[str, ...] = ()
    """items"""
    inner: Inner = field(default_factory=Inner)


def test_yaml_then_cli_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("name: from-yaml\nitems: [x, y]\ninner:\n  size: 7\n")
    cfg = load_yaml_config(Outer, cfg_file)
    assert (cfg.name, cfg.items, cfg.inner.size) == ("from-yaml", ("x", "y"), 7)
    cfg = parse_cli(Outer, ["--config", str(cfg_file), "--inner.size", "9"], prog="t")
    assert (cfg.name, cfg.inner.size) == ("from-yaml", 9)  # CLI beats YAML, YAML beats defaults


def test_unknown_config_keys_name_the_valid_fields(tmp_path):
    with pytest.raises(ConfigError, match="valid fields: size"):
        apply_overrides(Outer(), {"inner": {"sise": 1}})
    with pytest.raises(ConfigError, match="not found"):
        load_yaml_config(Outer, tmp_path / "missing.yaml")
