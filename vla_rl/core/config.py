"""Configuration: dataclasses are the schema, YAML files override their defaults, and the command
line (dotted flags such as `--env.num-envs 4`, parsed by tyro) overrides both.

    vla-rl eval --config configs/eval_metaworld_mt10.yaml --episodes 10 --env.num-workers 1
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or value that does not fit the schema; the message names valid fields."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _nested_dataclass(tp: Any) -> type | None:
    """The dataclass inside `tp` (also `X | None`), or None."""
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def apply_overrides(instance: T, overrides: dict[str, Any], where: str = "") -> T:
    """A copy of the dataclass `instance` with `overrides` (a nested dict) applied.

    Unknown keys raise ConfigError listing the valid fields, so a typo never passes silently.
    """
    types_ = _field_types(type(instance))
    changes = {}
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name not in types_:
            raise ConfigError(
                f"unknown config field {where + key!r}; valid fields: {', '.join(types_)}"
            )
        sub = _nested_dataclass(types_[name])
        if sub is not None and isinstance(value, dict):
            current = getattr(instance, name) or sub()
            value = apply_overrides(current, value, where=f"{where}{name}.")
        elif isinstance(value, list) and typing.get_origin(types_[name]) is tuple:
            value = tuple(value)
        changes[name] = value
    return dataclasses.replace(instance, **changes)  # type: ignore[type-var]


def load_yaml_config(cls: type[T], path: str | Path, base: T | None = None) -> T:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config fields, got {type(data).__name__}")
    return apply_overrides(base if base is not None else cls(), data)


def to_dict(instance: Any) -> dict[str, Any]:
    """The resolved config as plain JSON/YAML-serialisable data."""
    return dataclasses.asdict(instance)


def parse_cli(cls: type[T], args: list[str], prog: str, description: str = "") -> T:
    """Parse `args` into `cls`: `--config FILE` (YAML) first, then every other flag on top."""
    import tyro

    base = cls()
    rest = []
    i = 0
    while i < len(args):
        if args[i] == "--config":
            if i + 1 >= len(args):
                raise ConfigError("--config needs a YAML file path")
            base = load_yaml_config(cls, args[i + 1], base)
            i += 2
        elif args[i].startswith("--config="):
            base = load_yaml_config(cls, args[i].split("=", 1)[1], base)
            i += 1
        else:
            rest.append(args[i])
            i += 1
    return tyro.cli(cls, args=rest, default=base, prog=prog, description=description)
