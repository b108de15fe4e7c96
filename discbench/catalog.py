"""What ``discbench list losses`` and ``list protocols`` show, read without importing torch.

The built-in losses and protocols are described from their source files (``ast``): each class registered with
``@LOSSES.register()`` (or ``@PROTOCOLS.register()``) gives its ``name``, the protocols it is defined for and the
hyper-parameters of its ``__init__`` with their defaults, following its base classes among the files read. Nothing
is generated or stored, so nothing can go stale: a new loss file is listed as soon as it exists. When a file holds
something the reader cannot evaluate without running it (a computed default), the classes are imported instead
(about 4 s: ``import torch``), and always for third-party plugins (``discbench.losses`` entry points), whose
metadata lives in their classes. A test holds the static reading against the imported classes.

The leaderboard's suites are resolved the same way (``declared_plugins``): ``discbench.config.Bench`` resolves them
against classes made of what the built-ins' source declares of the attributes and methods it reads (``DECLARATIONS``:
a protocol's ``Config`` and ``inert``, a loss's version, ranges and hyper-parameters, ...), run without the rest of
their modules, so the configurations and their hashes are those of the imported classes, without torch. A declaration
that needs more of its module than its imports from torch-free modules, a suite that names a third-party loss (an
entry point) or a ``tv:``/``timm:`` backbone: those are imported. Tests hold every suite's resolution against the
imported classes'.
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


def _is_registration(decorator: ast.expr, registry: str) -> bool:
    """Whether ``decorator`` is ``@<registry>.register(...)``."""
    return (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr == "register" and isinstance(decorator.func.value, ast.Name)
            and decorator.func.value.id == registry)


def _registered_with(node: ast.ClassDef, registry: str) -> bool:
    return any(_is_registration(d, registry) for d in node.decorator_list)


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


# -- the classes the resolver reads, as their source declares them ---------------------------------------------------
# What ``discbench.config.Bench`` reads of a registered class (or of its bases) to resolve a run. Everything else in a
# class body (its networks, its forward) is left out, and nothing of a plugin's module runs but its imports from
# torch-free modules; the resolver then runs on these classes as on the imported ones (``declared_plugins``).
DECLARATIONS = {
    "PROTOCOLS": ("name", "partner", "needs_teacher", "kd_field", "family", "takes_loss", "Config", "inert"),
    "LOSSES": ("name", "version", "protocols", "replaces_kd", "ranges", "problems", "hparams", "__init__"),
    "BACKBONES": ("name",),
}
PACKAGES = {"PROTOCOLS": "discbench.protocols", "LOSSES": "discbench.losses", "BACKBONES": "discbench.backbones"}
ROOTS = ("Protocol", "Discrepancy", "Backbone")  # the base classes of discbench.api, read with each package
TORCH_FREE = ("discbench.config", "discbench.errors", "discbench.keys", "discbench.ranges", "discbench.typed")
_MISSING = object()


def _parsed(path: Path) -> ast.Module:
    """The syntax tree of a source file (parsed once per version of the file in a process)."""
    stat = path.stat()
    return _parse(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _parse(path: str, _mtime_ns: int, _size: int) -> ast.Module:
    return ast.parse(Path(path).read_text(encoding="utf-8"), path)


def _torch_free(module: str) -> bool:
    import sys

    return module in TORCH_FREE or module.partition(".")[0] in sys.stdlib_module_names


def _module_path(module: str) -> Path | None:
    """The source file of a discbench module, found without importing its package (which may import torch)."""
    root = package_dir("discbench").joinpath(*module.split(".")[1:])
    for path in (root.with_suffix(".py"), root / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_name(module: str, name: str, depth: int = 0) -> Any:
    """What ``from module import name`` binds, when it comes from a torch-free module (directly, or re-exported by a
    discbench module, as ``discbench.api`` re-exports ``discbench.ranges.Range``); else ``_MISSING``."""
    import importlib

    if _torch_free(module):
        try:
            imported = importlib.import_module(module)
            return getattr(imported, name) if hasattr(imported, name) else importlib.import_module(f"{module}.{name}")
        except ImportError:
            return _MISSING
    path = _module_path(module) if module.startswith("discbench.") and depth < 4 else None
    if path is None:
        return _MISSING
    for node in _parsed(path).body:
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _imported_name(node.module, alias.name, depth + 1)
    return _MISSING


def _namespace(module: str, tree: ast.Module) -> dict[str, Any]:
    """A module's globals as far as its imports from torch-free modules bind them (nothing else of it runs)."""
    import builtins
    import importlib
    from importlib.util import resolve_name

    ns: dict[str, Any] = {"__name__": module, "__builtins__": builtins}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _torch_free(alias.name):
                    try:
                        imported = importlib.import_module(alias.name)
                    except ImportError:
                        continue
                    top = alias.name.partition(".")[0]
                    ns[alias.asname or top] = imported if alias.asname else importlib.import_module(top)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            source = resolve_name("." * node.level + (node.module or ""), module.rpartition(".")[0])
            for alias in node.names:
                value = _imported_name(source, alias.name) if alias.name != "*" else _MISSING
                if value is not _MISSING:
                    ns[alias.asname or alias.name] = value
    return ns


def _bound(stmt: ast.stmt) -> set[str]:
    """The names a statement of a class body binds in the class."""
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {stmt.name}
    out: set[str] = set()
    stack: list[ast.AST] = [stmt]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            out.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            out |= {(a.asname or a.name).partition(".")[0] for a in node.names}
        elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
            out.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            out.add(node.rest)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                out.add(child.name)
            elif not isinstance(child, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
                stack.append(child)
    return out


class _Unannotated(ast.NodeTransformer):
    """Functions without annotations (they would be evaluated when the class is made, and may name torch types)."""

    def _strip(self, node: ast.AST) -> ast.AST:
        self.generic_visit(node)
        args = node.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is not None:
                arg.annotation = None
        if not isinstance(node, ast.Lambda):
            node.returns = None
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _strip


def _declaration(node: ast.ClassDef, keep: tuple[str, ...], registry: str) -> ast.ClassDef:
    """``node`` with only the statements that set ``keep`` (the ``Config`` dataclass keeps its field annotations;
    ``__init__`` keeps its signature, for ``hparams``); ``Unreadable`` when ``keep`` is set in another way."""
    import copy

    extra = [d for d in node.decorator_list if not _is_registration(d, registry)]
    if extra or node.keywords:
        raise Unreadable(f"class {node.name}: {ast.unparse(extra[0] if extra else node.keywords[0])}")
    body: list[ast.stmt] = []
    for item in node.body:
        bound = _bound(item) & {*keep, "__init_subclass__"}
        if not bound:
            continue
        if isinstance(item, ast.Assign) and len(item.targets) == 1 and isinstance(item.targets[0], ast.Name):
            body.append(item)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None:
            body.append(ast.copy_location(ast.Assign([ast.Name(item.target.id, ast.Store())], item.value), item))
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            continue  # declared without a value (``name: ClassVar[str]``): the class does not set it
        elif isinstance(item, ast.FunctionDef) and item.name != "__init_subclass__":
            function = _Unannotated().visit(copy.deepcopy(item))
            if item.name == "__init__":
                function.body = [ast.Pass()]  # only its signature is read
            body.append(function)
        elif isinstance(item, ast.ClassDef):
            body.append(_Unannotated().visit(copy.deepcopy(item)))
        else:
            raise Unreadable(f"class {node.name}: {ast.unparse(item).splitlines()[0]} sets {', '.join(sorted(bound))}")
    return ast.ClassDef(node.name, [], [], body or [ast.Pass()], [])


def _guarded(function: Any) -> Any:
    """``function``, whose call raises ``Unreadable`` where it needs a name its module's source alone does not bind."""
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (NameError, AttributeError) as exc:
            raise Unreadable(f"{function.__qualname__}: {exc}") from exc

    return call


def _guard(cls: type, keep: tuple[str, ...]) -> None:
    for key, value in list(vars(cls).items()):
        if isinstance(value, type) and key in keep:
            _guard(value, tuple(vars(value)))
        elif key.startswith("__"):
            continue
        elif isinstance(value, classmethod | staticmethod):
            setattr(cls, key, type(value)(_guarded(value.__func__)))
        elif callable(value) and not isinstance(value, type):
            setattr(cls, key, _guarded(value))


def _module_files(directory: Path) -> list[Path]:
    """The modules a built-in package imports (all of them, as its ``__init__`` does); each must be a source file."""
    import pkgutil

    files = []
    for info in pkgutil.iter_modules([str(directory)]):
        path = directory / f"{info.name}.py"
        if info.ispkg or not path.is_file():
            raise Unreadable(f"{directory / info.name}: not a module file")
        files.append(path)
    return sorted(files)


def declared_classes(registry: str, directory: Path | None = None) -> dict[str, type]:
    """Registered name -> a class made of what the source of the built-in package of ``registry`` ("PROTOCOLS",
    "LOSSES", "BACKBONES") declares of ``DECLARATIONS[registry]``, in each registered class and its bases
    (``discbench.api``'s included). ``Unreadable`` when a declaration needs what only importing its module would
    give (torch, a module-level value), also later, when a declared method is called."""
    keep = DECLARATIONS[registry]
    package = PACKAGES[registry]
    files = [("discbench.api", package_dir("discbench") / "api.py")]
    files += [(f"{package}.{path.stem}", path) for path in _module_files(directory or package_dir(package))]
    found: dict[str, list[tuple[str, Path, ast.Module, ast.ClassDef]]] = {}
    for module, path in files:
        tree = _parsed(path)
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and (module != "discbench.api" or node.name in ROOTS):
                found.setdefault(node.name, []).append((module, path, tree, node))

    def bases(node: ast.ClassDef) -> list[str]:
        return [name for b in node.bases if (name := ast.unparse(b).split(".")[-1]) in found]

    made: dict[str, type] = {}
    namespaces: dict[str, dict[str, Any]] = {}

    def make(name: str) -> type:
        if name in made:
            return made[name]
        if len(found[name]) > 1:
            raise Unreadable(f"two classes named {name}")
        module, path, tree, node = found[name][0]
        parents = [make(b) for b in bases(node)]
        ns = namespaces.setdefault(module, _namespace(module, tree))
        declaration = _declaration(node, keep, registry)
        declaration.bases = [ast.Name(f"__base{i}__", ast.Load()) for i in range(len(parents))]
        ns.update({f"__base{i}__": parent for i, parent in enumerate(parents)})
        code = compile(ast.fix_missing_locations(ast.Module([ast.copy_location(declaration, node)], [])), str(path),
                       "exec", dont_inherit=True)  # annotations evaluated: the Config fields' types, as build reads
        try:
            exec(code, ns)
        except Exception as exc:
            raise Unreadable(f"{path}:{node.lineno}: class {name}: {type(exc).__name__}: {exc}") from None
        cls = made[name] = ns[name]
        _guard(cls, keep)
        return cls

    out: dict[str, type] = {}
    for name, places in found.items():
        for _module, _path, _tree, node in places:
            decorator = next((d for d in node.decorator_list if _is_registration(d, registry)), None)
            if decorator is None:
                continue
            cls = make(name)
            key = _literal(decorator.args[0]) if decorator.args else next(
                (_literal(k.value) for k in decorator.keywords if k.arg == "name"), None) or getattr(cls, "name", None)
            if not key or getattr(cls, "name", key) != key or key in out:
                raise Unreadable(f"class {name}: registered as {key!r}")
            out[key] = cls
    return out


class Declared:
    """A registry whose built-ins are read from their source (``declared_classes``): ``names()``, ``get(name)`` and
    ``in`` answer as the registry's. A name the source does not declare (a third-party entry point, a ``tv:`` or
    ``timm:`` backbone, an unknown name and its error) is the registry's own, which imports what it needs."""

    def __init__(self, registry: Any, classes: dict[str, type]):
        self.registry = registry
        self.classes = classes
        self.kind = registry.kind

    @functools.cached_property
    def _entry_points(self) -> tuple[str, ...]:
        from discbench.registry import entry_points

        return tuple(ep.name for ep in entry_points(self.registry.group)) if self.registry.group else ()

    def names(self) -> list[str]:
        return sorted({*self.classes, *self._entry_points})

    def get(self, key: str) -> Any:
        return self.classes[key] if key in self.classes else self.registry.get(key)

    def __contains__(self, key: str) -> bool:
        if key in self.classes or key in self._entry_points:
            return True
        return key.startswith(getattr(self.registry, "prefixes", ())) and key in self.registry


def read_plugins(directories: dict[str, Path] | None = None) -> Any:
    """The plugins as ``discbench.config.Bench`` reads them, from the built-ins' source (no torch): a
    ``discbench.config.Plugins`` of ``Declared`` registries; ``Unreadable`` (or the error of reading a file) when a
    built-in cannot be read so. ``directories``: registry ("PROTOCOLS", "LOSSES", "BACKBONES") -> the package
    directory to read instead of the installed one (tests)."""
    from discbench.config import Plugins
    from discbench.registry import BACKBONES, LOSSES, PROTOCOLS

    registries = {"PROTOCOLS": PROTOCOLS, "LOSSES": LOSSES, "BACKBONES": BACKBONES}
    views = {key: Declared(r, declared_classes(key, (directories or {}).get(key))) for key, r in registries.items()}
    return Plugins(protocols=views["PROTOCOLS"], losses=views["LOSSES"], backbones=views["BACKBONES"])


def declared_plugins() -> Any:
    """``read_plugins()``, or None when the registries are to be read instead: this process imported them already
    (nothing to save, and they may hold entries added by hand), or a built-in cannot be read from its source."""
    from discbench.registry import BACKBONES, LOSSES, PROTOCOLS

    if any(r.imported for r in (PROTOCOLS, LOSSES, BACKBONES)):
        return None
    try:
        return read_plugins()
    except (Unreadable, OSError, SyntaxError, UnicodeDecodeError):
        return None
