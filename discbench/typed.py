"""The generic typed-configuration layer: frozen dataclasses built from TOML tables, each value type- and range-checked.

Nothing here knows bench.toml's sections; ``discbench.config`` builds its dataclasses with ``build`` and checks plugin
hyper-parameters with ``coerce`` and ``check_ranges``. Every problem is one ``DiscbenchError`` line naming the key,
the value and what is valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from discbench.errors import DiscbenchError
from discbench.ranges import FINITE, Range


# -- typed construction ----------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the type ``tp`` (int, float, bool, str, tuple[X, ...]); ints widen to floats."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg, where)
            except DiscbenchError:
                pass
        raise DiscbenchError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise DiscbenchError(f"{where}: expected a list of {_type_name(item)}, got {value!r}")
        return tuple(coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is type(None):
        if value is None:
            return None
        raise DiscbenchError(f"{where}: expected none, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise DiscbenchError(f"{where}: expected {tp.__name__}, got {value!r}")
    if not isinstance(value, tp):
        raise DiscbenchError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def unknown_key_message(where: str, key: str, valid: Sequence[str]) -> str:
    """``recipe 'smoke': unknown key 'epoch' (did you mean 'epochs'?); valid keys: ...`` (one line)."""
    close = difflib.get_close_matches(key, valid, n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"{where}: unknown key '{key}'{hint}; valid keys: {', '.join(valid)}"


def out_of_range(where: str, key: str, value: Any, problem: str, section: str | None) -> DiscbenchError:
    """``recipe 'smoke': epochs = 0 must be >= 1; fix it in bench.toml or with --set recipe.epochs=...``"""
    fix = f"; fix it in the configuration file or with --set {section}.{key}=..." if section else ""
    shown = list(value) if isinstance(value, tuple) else value
    return DiscbenchError(f"{where}: {key} = {shown!r} {problem}{fix}")


def check_ranges(values: Mapping[str, Any], ranges: Mapping[str, Range], where: str, section: str | None) -> None:
    """Every value within its declared range; every float finite (``FINITE``) even without one."""
    for key, value in values.items():
        problem = ranges.get(key, FINITE).problem(value)
        if problem:
            raise out_of_range(where, key, value, problem, section)


def build(cls: type, table: Mapping[str, Any], where: str, section: str | None = None, **fixed: Any) -> Any:
    """Instantiate the frozen dataclass ``cls`` from ``table``: unknown, missing, mistyped or out-of-range keys
    (ranges in the fields' metadata, constraints between fields in ``cls.problems``) are one-line errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in fixed]
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise DiscbenchError(unknown_key_message(where, unknown[0], names))
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in table
        and f.name not in fixed
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise DiscbenchError(f"{where}: missing key '{missing[0]}'")
    values = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in table.items()}
    check_ranges(values, {f.name: f.metadata["range"] for f in dataclasses.fields(cls) if "range" in f.metadata},
                 where, section)
    obj = cls(**values, **fixed)
    for key, value, problem in getattr(obj, "problems", list)():
        raise out_of_range(where, key, value, problem, section)
    return obj


def type_of_default(default: Any) -> Any:
    """The type a hyper-parameter's default implies: ``0.1`` -> float, ``(1, 2)`` -> tuple[int, ...], None -> Any."""
    if default is None:
        return Any
    if isinstance(default, tuple) and default:
        return tuple[type(default[0]), ...]
    return type(default)


