"""What ``discbench list losses`` shows, readable without importing torch.

Every loss is described by a ``LossCard``: its name, where it comes from, the protocols it is defined for and its
hyper-parameters with their defaults. A card is made from the loss class (``LossCard.of``), which means importing
the plugin and torch (about 4 s on a 2-core machine). For the built-ins, the cards are also stored in
``losses/index.json`` together with the SHA-256 of every file in ``losses/``; ``builtin_cards`` returns them without
importing anything as long as those files are unchanged, and None otherwise (the caller then imports the plugins:
the listing is never stale, only slower). A test regenerates the index from the classes and fails when the checked-in
copy differs; refresh it with::

    python -m discbench.catalog --write

Third-party plugins (``discbench.losses`` entry points) are always imported to be described: their metadata lives
in their classes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

INDEX_NAME = "index.json"


@dataclass(frozen=True)
class LossCard:
    """One row of ``list losses``; ``hparams`` maps each hyper-parameter to the repr of its default."""

    name: str
    origin: str
    protocols: tuple[str, ...]
    hparams: dict[str, str]

    @classmethod
    def of(cls, loss_cls: Any, origin: str) -> LossCard:
        return cls(loss_cls.name, origin, tuple(sorted(loss_cls.protocols)),
                   {k: repr(v) for k, v in loss_cls.hparams().items()})

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.hparams.items()) or "none"
        return f"{self.origin}; protocols {', '.join(self.protocols)}; hyper-parameters {params}"


def losses_dir() -> Path:
    """The directory of the built-in losses (``discbench.losses``), found without importing it."""
    spec = find_spec("discbench.losses")
    return Path(next(iter(spec.submodule_search_locations)))


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.py"))}


def builtin_cards(directory: Path | None = None) -> list[LossCard] | None:
    """The built-in cards from the index, or None when the index is missing, unreadable or older than a file."""
    directory = directory or losses_dir()
    try:
        index = json.loads((directory / INDEX_NAME).read_text())
        if index["files"] != _digests(directory):
            return None
        return [LossCard(c["name"], c["origin"], tuple(c["protocols"]), dict(c["hparams"])) for c in index["losses"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_index() -> dict[str, Any]:
    """The index of the built-in losses, made by importing them (what ``--write`` stores)."""
    from discbench.registry import LOSSES

    cards = [LossCard.of(LOSSES.get(name), origin) for name, origin in LOSSES.origins().items()
             if LOSSES.source(name).distribution == "discbench"]
    return {"files": _digests(losses_dir()), "losses": [asdict(c) for c in cards]}


def index_text(index: dict[str, Any]) -> str:
    return json.dumps(index, indent=1) + "\n"


def main(argv: list[str]) -> int:
    path = losses_dir() / INDEX_NAME
    text = index_text(build_index())
    if argv == ["--write"]:
        path.write_text(text)
        print(f"wrote {path}")
        return 0
    if argv == ["--check"]:
        current = path.read_text() if path.is_file() else ""
        if current != text:
            print(f"{path} is stale: run 'python -m discbench.catalog --write'", file=sys.stderr)
            return 1
        return 0
    print("usage: python -m discbench.catalog --write | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
