"""Typed names of what a run measures, in a module that imports no torch: run records and leaderboards read them.

- ``Classifier``: one evaluated classifier, exit ``exit`` of network ``network``;
- ``Term``: one logged loss term, ``name`` of network ``network`` at module ``module``.

Each has a ``key`` (``net1/exit4``, ``mi@net1.2``), the string under which records store its values; a record also
stores the typed names themselves, so that no reader ever parses a key back into its parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Classifier:
    """One classifier a protocol evaluates: exit ``exit`` (1-based module index) of network ``network``.

    ``network`` is the network's role in its protocol: ``net`` (self-distillation), ``net1``/``net2`` (online),
    ``student`` (offline); ``last`` marks the network's own final classifier (its exit T).
    """

    network: str
    backbone: str
    exit: int
    last: bool

    @property
    def key(self) -> str:
        """``net1/exit4``: the key of this classifier in ``predict`` and in run records."""
        return f"{self.network}/exit{self.exit}"


@dataclass(frozen=True)
class Term:
    """One named quantity a training step logs: the total (``loss``), a task term (``ce``, ``kd``), a plugin's loss
    (its registry name) or one of its terms (``mi``, ``si``).

    ``network`` is "" when the protocol trains one network (self-distillation), else the network's role (``net1``,
    ``student``); ``module`` is the 1-based source module of a per-module term, None for a network-level term.
    """

    name: str
    network: str = ""
    module: int | None = None

    @property
    def key(self) -> str:
        """``mi@2`` (one network), ``mi@net1.2``, ``ce@student``, ``loss``: how records and progress lines name it."""
        where = self.network + ("." if self.network and self.module is not None else "")
        where += "" if self.module is None else str(self.module)
        return f"{self.name}@{where}" if where else self.name

    @property
    def place(self) -> str:
        """Where it was measured: ``module 2``, ``net1 module 2``, ``student``, or "" for the total."""
        module = "" if self.module is None else f"module {self.module}"
        return " ".join(p for p in (self.network, module) if p)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "network": self.network, "module": self.module}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Term:
        return cls(str(data["name"]), str(data.get("network", "")), data.get("module"))


TOTAL = Term("loss")  # the weighted total of a step


def legacy_term(key: str) -> Term:
    """The ``Term`` of a key written by records of schema 2 and older (``mi@2``, ``mi@net1.2``, ``ce@student``,
    ``loss``); used once, when such a record is upgraded on reading."""
    name, _, where = key.partition("@")
    if not where:
        return Term(name)
    network, _, module = where.rpartition(".") if "." in where else ("", "", where)
    if module.isdigit():
        return Term(name, network, int(module))
    return Term(name, where)
