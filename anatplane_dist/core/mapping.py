"""Typed dataclasses from YAML mappings: the one loader of every config-like file.

Pretraining configs, experiment specs, sharding profiles and model configs are dataclasses
filled from YAML. :func:`from_dict` builds one, converting each value to its field's
annotation (so a typo or a wrong type fails at start-up naming the dotted key, not hours into a
job) and refusing unknown keys with the valid ones listed. Torch-free.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from anatplane_dist.core.errors import AnatplaneError, one_line

__all__ = ["ConfigError", "from_dict", "coerce_value", "field_types", "replace_checked", "read_yaml_mapping"]


class ConfigError(AnatplaneError, ValueError):
    """A config value or key that cannot be used; the message names the dotted key."""


def coerce_value(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/override value to annotation ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce_value(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:             # ``int | None``: say what the one real type wanted
            raise ConfigError(errors[0])
        raise ConfigError(f"{key}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple, collections.abc.Sequence):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(coerce_value(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        out = [coerce_value(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {coerce_value(k, kt, key): coerce_value(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # a NaN LR trains NaNs for hours; no config value means inf
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: cannot convert {value!r} to {tp}")


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: Mapping[str, Any] | None, prefix: str = "", *, kind: str = "config key",
              error: type[Exception] = ConfigError) -> Any:
    """Build dataclass ``cls`` from a mapping, each value converted to its field's annotation.

    A non-mapping, an unknown key (named with the valid ones), a value of the wrong type, or a
    value the dataclass's own checks refuse is one ``error`` (default :class:`ConfigError`)
    naming the dotted key. ``kind`` words the unknown-key message ("config key", "field", ...).
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise error(f"{prefix or cls.__name__}: expected a mapping, got {type(data).__name__}")
    data = dict(data)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise error(f"unknown {kind} {where}{unknown[0]!s} (valid keys of "
                    f"{prefix or cls.__name__}: {', '.join(sorted(names))})")
    try:
        hints = field_types(cls)
        kwargs = {k: coerce_value(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
        return cls(**kwargs)
    except ConfigError as e:
        if error is ConfigError or isinstance(e, error):
            raise
        raise error(str(e)) from None
    except TypeError as e:              # a required field missing
        raise error(f"{prefix or cls.__name__}: {e}") from None
    except ValueError as e:             # the dataclass's own checks (already ours: kept as they are)
        if isinstance(e, AnatplaneError):
            raise
        where = prefix or cls.__name__
        raise error(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    except ValueError as e:             # a range the dataclass's own checks refuse (width=0, batch_size=-1)
        raise error(one_line(e)) from None


def replace_checked(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` whose range checks (``__post_init__``) fail as one ConfigError."""
    try:
        return dataclasses.replace(obj, **changes)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(one_line(e)) from None


def read_yaml_mapping(path: str | os.PathLike, what: str = "config",
                      error: type[Exception] = ConfigError) -> dict[str, Any]:
    """A YAML file's top-level mapping, read with the safe loader; one ``error`` line otherwise.

    A syntax error names ``file:line:column``; a tag the safe loader does not construct
    (``!!python/object``...) is refused without running anything; an unreadable file says why.
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {what} {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        kind = ("YAML tag refused (plain YAML only; nothing was run)"
                if isinstance(e, yaml.constructor.ConstructorError) else "YAML syntax error")
        raise error(f"{where}: {kind}: {one_line(problem)}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise error(f"{path}: the top level of a {what} file must be a mapping")
    return loaded or {}
