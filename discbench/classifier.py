"""The ``Classifier`` of a protocol, in a module of its own that imports no torch: run records
(``discbench.results``) and leaderboards read it without loading torch. ``discbench.api`` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass


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
