"""One small generic registry for losses, backbones, datasets and protocols.

Built-ins register with a decorator when their package is imported (lazily, on first look-up); third-party
packages register losses through the ``discbench.losses`` entry-point group, whose targets are imported only when
that name is asked for. Duplicate names raise; an unknown name raises with "did you mean" and the list of names.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from discbench.errors import DiscbenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table with lazy built-ins and lazy entry points.

    Args:
        kind: what the entries are, for messages ("loss", "backbone", ...).
        builtin_package: package whose submodules register the built-ins when imported.
        entry_point_group: entry-point group of third-party entries, or None.
    """

    def __init__(self, kind: str, builtin_package: str | None = None, entry_point_group: str | None = None):
        self.kind = kind
        self._builtin_package = builtin_package
        self._group = entry_point_group
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._lazy: dict[str, EntryPoint] = {}
        self._loaded = False

    # -- registration ---------------------------------------------------------------------------------------------
    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (default: ``obj.name``)."""

        def decorate(obj: T) -> T:
            key = name or getattr(obj, "name", None)
            if not key:
                raise TypeError(f"cannot register {obj!r} as a {self.kind}: give a name or set a 'name' attribute")
            if getattr(obj, "name", key) != key:
                raise TypeError(f"{obj!r}: registered as '{key}' but its 'name' attribute says '{obj.name}'")
            self.add(key, obj, origin=f"built-in ({obj.__module__})")
            return obj

        return decorate

    def add(self, key: str, obj: T, origin: str) -> None:
        if key in self._entries or key in self._lazy:
            raise DiscbenchError(
                f"duplicate {self.kind} name '{key}': {origin} clashes with {self._origins[key]}; rename one of them"
            )
        self._entries[key] = obj
        self._origins[key] = origin

    def unregister(self, key: str) -> None:
        """Remove ``key`` (tests use it to clean up temporary plugins)."""
        self._entries.pop(key, None)
        self._lazy.pop(key, None)
        self._origins.pop(key, None)

    # -- loading --------------------------------------------------------------------------------------------------
    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self._builtin_package:
            importlib.import_module(self._builtin_package)
        if self._group:
            for ep in entry_points(group=self._group):
                dist = ep.dist.name if ep.dist is not None else "?"
                origin = f"entry point '{ep.value}' of package {dist}"
                if ep.name in self._entries or ep.name in self._lazy:
                    raise DiscbenchError(
                        f"duplicate {self.kind} name '{ep.name}': {origin} clashes with {self._origins[ep.name]}; "
                        f"rename one of them"
                    )
                self._lazy[ep.name] = ep
                self._origins[ep.name] = origin

    def names(self) -> list[str]:
        self._load()
        return sorted([*self._entries, *self._lazy])

    def origins(self) -> dict[str, str]:
        self._load()
        return {k: self._origins[k] for k in self.names()}

    def __contains__(self, key: str) -> bool:
        return key in self.names()

    def get(self, key: str) -> T:
        """The entry called ``key``; raises ``DiscbenchError`` with close matches if there is none."""
        self._load()
        if key in self._lazy:
            ep = self._lazy.pop(key)
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party package: say which one
                self._lazy[key] = ep
                raise DiscbenchError(f"cannot load {self.kind} '{key}' from {self._origins[key]}: {exc}") from exc
            if getattr(obj, "name", None) != key:
                obj.name = key  # the entry-point name is the registry key
            self._entries[key] = obj
        if key not in self._entries:
            raise DiscbenchError(unknown_name_message(self.kind, key, self.names()))
        return self._entries[key]


def unknown_name_message(kind: str, key: str, valid: Iterable[str]) -> str:
    """``unknown loss 'mi_si'; did you mean 'mi_x_si'? valid: ...`` (one line)."""
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} '{key}'{hint} valid: {', '.join(valid)}"


LOSSES: Registry = Registry("loss", builtin_package="discbench.losses", entry_point_group="discbench.losses")
BACKBONES: Registry = Registry("backbone", builtin_package="discbench.backbones")
DATASETS: Registry = Registry("dataset", builtin_package="discbench.data")
PROTOCOLS: Registry = Registry("protocol", builtin_package="discbench.protocols")
