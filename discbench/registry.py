"""One small generic registry for losses, backbones, datasets and protocols.

Built-ins register with a decorator when their package is imported (lazily, on first look-up); third-party
packages register losses through the ``discbench.losses`` entry-point group, whose targets are imported only when
that name is asked for. An unknown name raises with "did you mean" and the list of names.

A broken third-party entry never breaks another entry nor a command that does not use it:

- an entry point whose name is taken (by a built-in or an earlier entry point) is skipped with a one-line warning on
  stderr that names the entry point and the package to rename it in; the entry already registered is kept;
- an entry point that fails to import, that is not what the registry holds (``base``: for losses, a
  ``discbench.api.Discrepancy`` subclass) or whose class ``name`` differs from the entry point's name is listed, but
  ``get`` raises a one-line ``DiscbenchError`` naming it, its package and the fix; ``problem`` returns that line.

Every entry knows where it came from (``source``): the distribution (package) that provided it, that distribution's
version and the import path of the object (``module:attr``); run records store it.

This module imports neither torch nor the entries: ``discbench --help`` and ``discbench list budgets`` stay fast.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from discbench.errors import DiscbenchError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

T = TypeVar("T")


def entry_points(group: str) -> list[EntryPoint]:
    """The installed entry points of ``group`` (importlib.metadata is imported on first use: it costs start-up)."""
    from importlib.metadata import entry_points as installed

    return list(installed(group=group))


@dataclass(frozen=True)
class Source:
    """Where a registry entry comes from.

    Attributes:
        distribution: the installed distribution (package) that provided it: ``discbench`` for built-ins, the
            package of an entry point, None when unknown (an entry added by hand, e.g. by a test).
        distribution_version: that distribution's version (None when unknown).
        entry_point: the import path of the object, ``module:attr`` (an entry point's value; for built-ins the
            class's module and qualified name).
    """

    distribution: str | None
    distribution_version: str | None
    entry_point: str | None

    @property
    def package(self) -> str:
        """``package discbench-plugin-example 0.1.0`` (or ``unknown package``), for messages."""
        if not self.distribution:
            return "unknown package"
        return f"package {self.distribution}" + (f" {self.distribution_version}" if self.distribution_version else "")


def _import_path(obj: object) -> str | None:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname else None


def _builtin_source(obj: object) -> Source:
    import discbench

    return Source("discbench", discbench.__version__, _import_path(obj))


def _entry_point_source(ep: EntryPoint) -> Source:
    dist = getattr(ep, "dist", None)
    return Source(getattr(dist, "name", None), getattr(dist, "version", None), ep.value)


def _what_it_is(obj: object) -> str:
    if inspect.isclass(obj):
        return f"the class {obj.__qualname__}"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "a function"
    if inspect.ismodule(obj):
        return "a module"
    return f"an instance of {type(obj).__qualname__}"


class Registry(Generic[T]):
    """A name -> object table with lazy built-ins and lazy entry points.

    Args:
        kind: what the entries are, for messages ("loss", "backbone", ...).
        builtin_package: package whose submodules register the built-ins when imported.
        entry_point_group: entry-point group of third-party entries, or None.
        base: ``"module:Class"`` that every entry-point target must subclass (imported only when one is loaded),
            or None for any object.
        check: called as ``check(key, obj)`` on a loaded entry-point target; returns (what is wrong, the fix), each
            a short phrase, or None.
    """

    def __init__(self, kind: str, builtin_package: str | None = None, entry_point_group: str | None = None,
                 base: str | None = None, check: Callable[[str, T], tuple[str, str] | None] | None = None):
        self.kind = kind
        self._builtin_package = builtin_package
        self._group = entry_point_group
        self._base = base
        self._check = check
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._sources: dict[str, Source] = {}
        self._lazy: dict[str, EntryPoint] = {}
        self._broken: dict[str, tuple[str, str]] = {}  # key -> (what is wrong, how to fix it)
        self.warnings: list[str] = []  # skipped entry points, one line each (also printed on stderr)
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
            self.add(key, obj, origin=f"built-in ({obj.__module__})", source=_builtin_source(obj))
            return obj

        return decorate

    def add(self, key: str, obj: T, origin: str, source: Source | None = None) -> None:
        """Register ``obj`` under ``key``; a name already taken raises (two built-ins must never share a name)."""
        if key in self._entries or key in self._lazy:
            raise DiscbenchError(
                f"duplicate {self.kind} name '{key}': {origin} clashes with {self._origins[key]}; rename one of them"
            )
        self._entries[key] = obj
        self._origins[key] = origin
        self._sources[key] = source or Source(None, None, _import_path(obj))

    def unregister(self, key: str) -> None:
        """Remove ``key`` (tests use it to clean up temporary plugins)."""
        for table in (self._entries, self._lazy, self._origins, self._sources, self._broken):
            table.pop(key, None)

    # -- loading --------------------------------------------------------------------------------------------------
    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self._builtin_package:
            importlib.import_module(self._builtin_package)
        if self._group:
            self._scan_entry_points()

    def _scan_entry_points(self) -> None:
        """List the group's entry points without importing them; skip (with a warning) a name already taken."""
        for ep in entry_points(group=self._group):
            source = _entry_point_source(ep)
            origin = f"entry point '{ep.value}' of {source.package}"
            if ep.name in self._entries or ep.name in self._lazy:
                if self._sources.get(ep.name) == source:
                    continue  # the same distribution seen twice on sys.path
                self._warn(
                    f"{self.kind} '{ep.name}' of {source.package} (entry point '{ep.name} = {ep.value}') is "
                    f"skipped: the name is taken by {self._origins[ep.name]}; rename that entry point in "
                    f"{source.distribution or 'its package'}'s [project.entry-points.\"{self._group}\"]"
                )
                continue
            self._lazy[ep.name] = ep
            self._origins[ep.name] = origin
            self._sources[ep.name] = source

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        print(f"warning: {message}", file=sys.stderr)

    @property
    def group(self) -> str | None:
        """The entry-point group of third-party entries (None: built-ins only)."""
        return self._group

    @property
    def imported(self) -> bool:
        """Whether this process holds entries of this registry already (its built-ins were imported, or entries were
        added by hand): a reader of the built-ins' source would not see what was added."""
        return self._loaded or bool(self._entries)

    def names(self) -> list[str]:
        self._load()
        return sorted([*self._entries, *self._lazy])

    def origins(self) -> dict[str, str]:
        self._load()
        return {k: self._origins[k] for k in self.names()}

    def source(self, key: str) -> Source:
        """Where ``key`` comes from: its distribution, that distribution's version and its import path."""
        self._load()
        if key not in self._sources:
            raise DiscbenchError(unknown_name_message(self.kind, key, self.names()))
        return self._sources[key]

    def describe(self, key: str) -> str:
        """``loss 'cosine_hint' (entry point 'cosine_hint = m:C' of package p 0.1.0)``, or ``(built-in, module)``."""
        source = self.source(key)
        if key in self._lazy or key in self._broken or (source.distribution not in (None, "discbench")):
            return f"{self.kind} '{key}' (entry point '{key} = {source.entry_point}' of {source.package})"
        return f"{self.kind} '{key}' ({self._origins[key]})"

    def __contains__(self, key: str) -> bool:
        return key in self.names()

    def get(self, key: str) -> T:
        """The entry called ``key``; raises ``DiscbenchError`` with close matches if there is none, or with one line
        naming the entry, its package and the fix if it is broken."""
        self._load()
        if key in self._broken:
            raise DiscbenchError(self.problem(key))
        if key in self._lazy:
            ep = self._lazy[key]
            source = self._sources[key]
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party package: say which one, in one line
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                self._broken[key] = (f"cannot be imported: {type(exc).__name__}" + (f": {first}" if first else ""),
                                     f"fix {source.distribution or 'the package'} or uninstall it"
                                     + (f" (pip uninstall {source.distribution})" if source.distribution else ""))
                raise DiscbenchError(self.problem(key)) from exc
            problem = self._validate(key, obj)
            if problem:
                self._broken[key] = problem
                raise DiscbenchError(self.problem(key))
            del self._lazy[key]
            self._entries[key] = obj
        if key not in self._entries:
            raise DiscbenchError(unknown_name_message(self.kind, key, self.names()))
        return self._entries[key]

    def problem(self, key: str) -> str | None:
        """The one-line error of a broken entry (after trying to load it), or None if ``key`` loads."""
        if key not in self._broken:
            try:
                self.get(key)
            except DiscbenchError:
                if key not in self._broken:
                    raise
        if key not in self._broken:
            return None
        what, fix = self._broken[key]
        return f"{self.describe(key)} {what}; {fix}"

    def _validate(self, key: str, obj: T) -> tuple[str, str] | None:
        """What is wrong with an entry point's target, and the fix; None if nothing."""
        ep = self._lazy[key]
        if self._base:
            module, _, attr = self._base.partition(":")
            base = getattr(importlib.import_module(module), attr)
            if not (inspect.isclass(obj) and issubclass(obj, base)):
                return (f"is {_what_it_is(obj)}, not a subclass of {module}.{attr}",
                        f"point the entry point at the {attr} subclass ('{key} = module:ClassName')")
        declared = getattr(obj, "name", None)
        if declared != key:
            said = f"declares name = {declared!r}" if declared else "declares no name"
            return (f"{said} but its entry point is called '{key}'",
                    f"make them equal: name = '{key}' in {ep.value}, or rename the entry point")
        return self._check(key, obj) if self._check else None


def _check_loss(key: str, cls: type) -> tuple[str, str] | None:
    """A loss class's hyper-parameters must be readable (keyword arguments of ``__init__`` with defaults)."""
    try:
        cls.hparams()
    except Exception as exc:
        return (f"has unreadable hyper-parameters ({exc})",
                f"give every keyword argument of __init__ a default, then run 'discbench validate --loss {key}'")
    return None


def unknown_name_message(kind: str, key: str, valid: Iterable[str]) -> str:
    """``unknown loss 'mi_si'; did you mean 'mi_x_si'? valid: ...`` (one line)."""
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} '{key}'{hint} valid: {', '.join(valid)}"


LOSSES: Registry = Registry("loss", builtin_package="discbench.losses", entry_point_group="discbench.losses",
                            base="discbench.api:Discrepancy", check=_check_loss)
class BackboneRegistry(Registry):
    """The backbone registry: the built-ins, plus ``tv:NAME`` (any torchvision classifier) and ``timm:NAME`` (any
    timm model with feature support), whose classes ``discbench.backbones.adapters`` makes on first use."""

    prefixes = ("tv:", "timm:")

    def get(self, key: str):
        if key.startswith(self.prefixes):
            if key not in self._entries:
                from discbench.backbones.adapters import adapter_class

                self._entries[key] = adapter_class(key)
                self._origins[key] = f"adapter ({key.partition(':')[0]})"
                self._sources[key] = _builtin_source(self._entries[key])
            return self._entries[key]
        self._load()
        if key not in self._entries:
            raise DiscbenchError(unknown_name_message(self.kind, key, self.names())
                                 + "; or tv:NAME (any torchvision classifier), timm:NAME (any timm model with "
                                   "features_only)")
        return self._entries[key]

    def names(self) -> list[str]:
        """The built-in (and registered) names; adapted ``tv:``/``timm:`` names are not listed."""
        self._load()
        return sorted(k for k in [*self._entries, *self._lazy] if not k.startswith(self.prefixes))

    def __contains__(self, key: str) -> bool:
        if key.startswith(self.prefixes):
            try:
                self.get(key)
            except DiscbenchError:
                return False
            return True
        return key in self.names()


BACKBONES: Registry = BackboneRegistry("backbone", builtin_package="discbench.backbones")
DATASETS: Registry = Registry("dataset", builtin_package="discbench.data")
PROTOCOLS: Registry = Registry("protocol", builtin_package="discbench.protocols")
