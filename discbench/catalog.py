"""What ``discbench list losses`` and ``list protocols`` show, read without importing torch.

The built-in losses and protocols are described from their source files (``ast``): each class registered with
``@LOSSES.register()`` (or ``@PROTOCOLS.register()``) gives its ``name``, the protocols it is defined for and the
hyper-parameters of its ``__init__`` with their defaults, following its base classes among the files read. Nothing
is generated or stored, so nothing can go stale: a new loss file is listed as soon as it exists. When a file holds
something the reader cannot evaluate without running it (a computed default), the classes are imported instead
(about 4 s: ``import torch``), and always for third-party plugins (``discbench.losses`` entry points), whose
metadata lives in their classes. A test holds the static reading against the imported classes.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LossCard:
    """One row of ``list losses``; ``hparams`` maps each hyper-parameter to the repr of its default."""

    name: str
    origin: str
    protocols: tuple[str, ...]
    hparams: dict[str, str]

    @classmethod
    def of(cls, loss_cls: Any, origin: str, every_protocol: tuple[str, ...]) -> LossCard:
        protocols = every_protocol if loss_cls.protocols is None else tuple(sorted(loss_cls.protocols))
        return cls(loss_cls.name, origin, protocols, {k: repr(v) for k, v in loss_cls.hparams().items()})

    def describe(self) -> str:
        if "; ERROR: " in self.origin:  # a plugin that cannot be loaded has no protocols or hyper-parameters to show
            return self.origin
        params = ", ".join(f"{k}={v}" for k, v in self.hparams.items()) or "none"
        return f"{self.origin}; protocols {', '.join(self.protocols)}; hyper-parameters {params}"


def package_dir(package: str) -> Path:
    """The directory of a discbench package, found without importing it."""
    spec = find_spec(package)
    return Path(next(iter(spec.submodule_search_locations)))


class Unreadable(Exception):
    """A source file holds something only running it would tell."""


@dataclass
class _Class:
    module: str
    bases: list[str]
    attrs: dict[str, ast.expr]
    init: ast.FunctionDef | None
    registered: bool


def _registered_with(node: ast.ClassDef, registry: str) -> bool:
    return any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "register"
               and isinstance(d.func.value, ast.Name) and d.func.value.id == registry for d in node.decorator_list)


def _classes(directory: Path, package: str, registry: str) -> dict[str, _Class]:
    out: dict[str, _Class] = {}
    for path in sorted(directory.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            if node.name in out:
                raise Unreadable(f"two classes named {node.name}")
            attrs, init = {}, None
            for item in node.body:
                if isinstance(item, ast.Assign) and len(item.targets) == 1 and isinstance(item.targets[0], ast.Name):
                    attrs[item.targets[0].id] = item.value
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None:
                    attrs[item.target.id] = item.value
                elif isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    init = item
            out[node.name] = _Class(f"{package}.{path.stem}", [ast.unparse(b).split(".")[-1] for b in node.bases],
                                    attrs, init, _registered_with(node, registry))
    return out


def _lookup(classes: dict[str, _Class], name: str, attr: str) -> ast.expr | None:
    """``attr`` of class ``name`` or of its nearest base among ``classes`` (None: not set there)."""
    cls = classes.get(name)
    if cls is None:
        return None
    if attr in cls.attrs:
        return cls.attrs[attr]
    for base in cls.bases:
        found = _lookup(classes, base, attr)
        if found is not None:
            return found
    return None


def _init(classes: dict[str, _Class], name: str) -> ast.FunctionDef | None:
    cls = classes.get(name)
    if cls is None:
        return None
    return cls.init or next((i for b in cls.bases if (i := _init(classes, b)) is not None), None)


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise Unreadable(ast.unparse(node)) from None


def _protocol_set(node: ast.expr | None) -> tuple[str, ...] | None:
    """``frozenset({"online"})`` -> ("online",); None (every protocol) when unset or ``None``."""
    if node is None or (isinstance(node, ast.Constant) and node.value is None):
        return None
    if isinstance(node, ast.Call) and not node.args:
        return ()
    if isinstance(node, ast.Call) and len(node.args) == 1:
        return tuple(sorted(_literal(node.args[0])))
    raise Unreadable(ast.unparse(node))


def _hparams(init: ast.FunctionDef | None) -> dict[str, str]:
    """Keyword arguments of ``__init__`` after (self, source, target) with the repr of their defaults."""
    if init is None:
        return {}
    args = init.args
    positional = args.posonlyargs + args.args
    defaults = dict(zip([a.arg for a in positional[len(positional) - len(args.defaults):]], args.defaults,
                        strict=True))
    defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None})
    names = [a.arg for a in positional[3:]] + [a.arg for a in args.kwonlyargs]
    return {n: repr(_literal(defaults[n])) for n in names if n in defaults}


@dataclass(frozen=True)
class ProtocolCard:
    """A built-in protocol as its source declares it (``discbench.api.Protocol``'s class attributes)."""

    name: str
    partner: str | None
    module: str
    family: str  # the protocol whose tables its rows join (its own name when it declares none)
    takes_loss: bool


def protocol_names() -> tuple[str, ...]:
    """The built-in protocols' names, sorted, read from their files."""
    return tuple(p.name for p in protocol_cards())


def loss_protocols() -> tuple[str, ...]:
    """The protocols a discrepancy plugin can run under (``takes_loss``), sorted."""
    return tuple(p.name for p in protocol_cards() if p.takes_loss)


def table_protocol(name: str) -> str:
    """The protocol whose tables a run of protocol ``name`` joins (its ``family``; itself for an unknown name)."""
    return next((p.family for p in protocol_cards() if p.name == name), name)


@functools.cache
def protocol_cards() -> tuple[ProtocolCard, ...]:
    """Every built-in protocol, by name (read once per process)."""
    classes = _classes(package_dir("discbench.protocols"), "discbench.protocols", "PROTOCOLS")
    out = []
    for cls_name, cls in classes.items():
        if cls.registered:
            def attr(key: str, default: Any, cls_name: str = cls_name) -> Any:
                node = _lookup(classes, cls_name, key)
                return default if node is None else _literal(node)

            name = attr("name", None)
            out.append(ProtocolCard(name, attr("partner", None), cls.module, attr("family", None) or name,
                                    attr("takes_loss", True)))
    return tuple(sorted(out, key=lambda p: p.name))


def static_cards(directory: Path | None = None) -> list[LossCard]:
    """The built-in losses' cards, read from their source files (``Unreadable`` if one cannot be read so)."""
    classes = _classes(directory or package_dir("discbench.losses"), "discbench.losses", "LOSSES")
    every = loss_protocols()
    cards = []
    for cls_name, cls in classes.items():
        if not cls.registered:
            continue
        protocols = _protocol_set(_lookup(classes, cls_name, "protocols"))
        cards.append(LossCard(_literal(_lookup(classes, cls_name, "name")), f"built-in ({cls.module})",
                              every if protocols is None else protocols, _hparams(_init(classes, cls_name))))
    return sorted(cards, key=lambda c: c.name)


def imported_cards() -> list[LossCard]:
    """Every registered loss's card, from its imported class (third-party plugins included); a plugin that cannot be
    loaded is a card whose origin says ``ERROR: ...`` (the others are listed all the same)."""
    from discbench.registry import LOSSES, PROTOCOLS

    every = tuple(n for n in PROTOCOLS.names() if PROTOCOLS.get(n).takes_loss)
    cards = []
    for name, origin in LOSSES.origins().items():
        problem = LOSSES.problem(name)
        cards.append(LossCard(name, f"{origin}; ERROR: {problem}", (), {}) if problem
                     else LossCard.of(LOSSES.get(name), origin, every))
    return cards


def loss_cards() -> list[LossCard]:
    """What ``list losses`` shows: the static cards when only the built-ins are installed and readable, else the
    imported ones."""
    from discbench.registry import entry_points

    if not entry_points("discbench.losses"):
        try:
            return static_cards()
        except (Unreadable, OSError, SyntaxError):
            pass
    return imported_cards()


def protocol_rows() -> list[tuple[str, str]]:
    """``list protocols``: each built-in protocol, where it comes from and the option naming its second network."""
    def describe(p: ProtocolCard) -> str:
        return (f"built-in ({p.module})" + (f"; second network: --{p.partner}" if p.partner else "")
                + (f"; rows join the {p.family} tables" if p.family != p.name else "")
                + ("" if p.takes_loss else "; its own objective, no discrepancy plugin"))

    return [(p.name, describe(p)) for p in protocol_cards()]
