"""Configuration: dataclasses are the schema, YAML files override their defaults, and the command
line (dotted flags such as `--env.num-envs 4`, parsed by tyro) overrides both.

    vla-rl eval --config configs/eval_metaworld_mt10.yaml --episodes 10 --env.num-workers 1
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import math
import types
import typing
from collections.abc import Callable
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
    if _is_union(tp):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _is_union(tp: Any) -> bool:
    return isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union


def _type_name(tp: Any) -> str:
    if _is_union(tp):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return "a list"
    names = {int: "an int", float: "a number", bool: "true or false", str: "a string"}
    return names.get(tp, "None" if tp is type(None) else getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, field: str) -> Any:
    """`value` (from YAML) as the annotation `tp` says, or ConfigError naming `field`."""
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, field)
            except ConfigError:
                pass
        raise ConfigError(f"{field}: {value!r} is not {_type_name(tp)}")
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{field}: {value!r} is not a list")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        if (len(args) == 2 and args[1] is Ellipsis) or len(args) == 1:
            return tuple(_coerce(v, item, f"{field}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{field}: expected a list of {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{field}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
    ok = {
        # bool is an int subclass in Python, but `episodes: true` is surely a mistake
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads `1e-4` (no dot) as a string; it is a number to anyone writing it
            return float(value)
        except ValueError:
            pass
    if tp in ok:
        if not ok[tp]:
            raise ConfigError(f"{field}: {value!r} is not {_type_name(tp)}")
        return float(value) if tp is float else value
    return value  # an annotation we do not check (Any, ...): tyro and the commands judge it


def apply_overrides(instance: T, overrides: dict[str, Any], where: str = "") -> T:
    """A copy of the dataclass `instance` with `overrides` (a nested dict) applied.

    Unknown keys raise ConfigError listing the valid fields, so a typo never passes silently;
    a value of the wrong type raises ConfigError naming the field.
    """
    types_ = _field_types(type(instance))
    changes = {}
    for key, value in overrides.items():
        name = str(key).replace("-", "_")
        if name not in types_:
            close = difflib.get_close_matches(name, list(types_), n=1)
            hint = f"did you mean {where}{close[0]}? " if close else ""
            valid = ", ".join(types_)
            field = where + str(key)
            raise ConfigError(f"unknown config field {field!r}; {hint}valid fields: {valid}")
        sub = _nested_dataclass(types_[name])
        if sub is not None:
            if isinstance(value, dict):
                current = getattr(instance, name) or sub()
                value = apply_overrides(current, value, where=f"{where}{name}.")
            elif not (value is None and _is_union(types_[name])):
                # a section needs a mapping; anything else would reach tyro as a non-dataclass
                # default (which it does not reject: `env: 4` used to hang there)
                raise ConfigError(
                    f"{where}{name}: {value!r} is not a section; expected a mapping of "
                    f"{', '.join(f.name for f in dataclasses.fields(sub))}"
                )
        else:
            value = _coerce(value, types_[name], where + name)
        changes[name] = value
    return dataclasses.replace(instance, **changes)  # type: ignore[type-var]


def load_yaml_config(cls: type[T], path: str | Path, base: T | None = None) -> T:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:  # tabs, bad indentation, unclosed brackets...
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{at}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config fields, got {type(data).__name__}")
    try:
        return apply_overrides(base if base is not None else cls(), data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def to_dict(instance: Any) -> dict[str, Any]:
    """The resolved config as plain JSON/YAML-serialisable data."""
    return dataclasses.asdict(instance)


# ---- checks every parsed config gets ----------------------------------------------------------
_CHECKS: dict[type, Callable[[Any, str], None]] = {}


def register_check(cls: type, check: Callable[[Any, str], None]) -> None:
    """Run `check(instance, flag)` on every `cls` found in a config parse_cli returns (`flag`:
    its dotted flag, e.g. "env"), so a shared section is checked once for every command."""
    _CHECKS[cls] = check


def check_config(instance: Any, where: str = "") -> None:
    """Raise ConfigError for a non-finite float anywhere in the tree, then run the registered
    checks of its sections."""
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        flag = where + f.name.replace("_", "-")
        if dataclasses.is_dataclass(value):
            check_config(value, flag + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{flag}: {value} is not a finite number")
        elif isinstance(value, tuple):
            for item in value:
                if isinstance(item, float) and not math.isfinite(item):
                    raise ConfigError(f"--{flag}: {item} is not a finite number")
    for cls, check in _CHECKS.items():
        if isinstance(instance, cls):
            check(instance, where.rstrip("."))


# ---- the command line -------------------------------------------------------------------------
def cli_flags(cls: type) -> dict[str, Any]:
    """Every flag tyro accepts for `cls` (without the leading --) -> its annotation; a bool
    field also has its `no-` form."""
    out: dict[str, Any] = {}

    def walk(c: type, prefix: str) -> None:
        for name, tp in _field_types(c).items():
            flag = prefix + name.replace("_", "-")
            sub = _nested_dataclass(tp)
            if sub is not None:
                walk(sub, flag + ".")
                continue
            out[flag] = tp
            if tp is bool:
                out[prefix + "no-" + name.replace("_", "-")] = tp

    walk(cls, "")
    return out


def _scalar_types(tp: Any) -> tuple[Any, ...]:
    return tuple(typing.get_args(tp)) if _is_union(tp) else (tp,)


def _check_cli_value(flag: str, tp: Any, values: list[str]) -> None:
    """ConfigError if the strings after `--flag` cannot be `tp`; tyro converts them later."""
    if tp is bool:
        if values:
            base = flag.rsplit(".", 1)
            neg = f"{base[0]}.no-{base[1]}" if len(base) == 2 else f"no-{flag}"
            raise ConfigError(
                f"--{flag} takes no value (use --{flag} or --{neg}), got {values[0]!r}"
            )
        return
    is_tuple = typing.get_origin(tp) is tuple
    if not values and not is_tuple:
        raise ConfigError(f"--{flag} needs a value ({_type_name(tp)})")
    if is_tuple:
        args = typing.get_args(tp)
        tp = args[0] if args else str
    elif len(values) > 1:
        raise ConfigError(f"--{flag} takes one value, got {len(values)}: {' '.join(values)}")
    options = _scalar_types(tp)
    for value in values:
        if type(None) in options and value == "None":
            continue
        if str in options or any(t not in (int, float, type(None)) for t in options):
            continue
        for t in (int, float):
            if t in options:
                try:
                    t(value)
                    break
                except ValueError:
                    pass
        else:
            raise ConfigError(f"--{flag}: {value!r} is not {_type_name(tp)}")


def _check_argv(cls: type, args: list[str]) -> None:
    """One clear line for an unknown flag (with the closest valid one), a value of the wrong
    type, a missing value or a stray argument, before tyro (whose errors are multi-line boxes)."""
    flags = cli_flags(cls)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r} (options are --name value)")
        name, eq, inline = arg[2:].partition("=")
        flag = name.replace("_", "-")
        if flag not in flags:
            close = difflib.get_close_matches(flag, list(flags), n=1, cutoff=0.6)
            hint = f"; did you mean --{close[0]}?" if close else "; see --help for the options"
            raise ConfigError(f"unknown flag --{name}{hint}")
        j = i + 1
        # a value is anything up to the next flag ("-1" is a value, "--x" a flag)
        while j < len(args) and not args[j].startswith("--"):
            j += 1
        values = [inline] if eq else []
        values += args[i + 1 : j]
        _check_cli_value(flag, flags[flag], values)
        i = j


def _one_line(tyro_output: str) -> str:
    """The first message of tyro's boxed error, on one line."""
    lines = []
    for line in tyro_output.splitlines():
        text = line.strip().strip("│╭╮╰╯").strip()
        if text.startswith("─") or text.startswith("For full helptext"):
            if lines:
                break
            continue
        if text and not text.startswith("╭") and not text.startswith("╰"):
            lines.append(text)
    return " ".join(lines) or "invalid arguments (see --help)"


def parse_cli(cls: type[T], args: list[str], prog: str, description: str = "") -> T:
    """Parse `args` into `cls`: `--config FILE` (YAML) first, then every other flag on top.

    Every error is one ConfigError line (the CLI prints it and exits 2); `--help` prints the
    options and exits 0 as usual.
    """
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
    wants_help = any(a in ("-h", "--help") for a in rest)
    if not wants_help:
        _check_argv(cls, rest)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured) if not wants_help else contextlib.nullcontext():
            cfg = tyro.cli(cls, args=rest, default=base, prog=prog, description=description)
    except SystemExit as exit_:
        if exit_.code in (0, None):
            raise
        # what _check_argv did not foresee: tyro's own message, flattened to one line
        raise ConfigError(_one_line(captured.getvalue())) from None
    check_config(cfg)
    return cfg
