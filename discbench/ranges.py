"""Valid ranges of configuration values, declared beside the values (torch-free).

A field of a configuration dataclass declares its range in its metadata (``field(metadata=within(ge=1))``); a loss
plugin declares the ranges of its hyper-parameters in its ``ranges`` class attribute (``{"dim": Range(ge=1)}``).
``discbench.config`` checks every value against its range when a run is resolved, before any data loads, and a
violation is one line naming the key, the value, the range and the fix. A float is always checked to be finite
(NaN and infinity are never valid settings), whether or not it declares a range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """Bounds of a number (each optional); for a list, ``each`` applies them to every element and ``min_len`` bounds
    its length."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    min_len: int | None = None

    def __str__(self) -> str:
        lower = f"> {self.gt:g}" if self.gt is not None else f">= {self.ge:g}" if self.ge is not None else ""
        upper = f"< {self.lt:g}" if self.lt is not None else f"<= {self.le:g}" if self.le is not None else ""
        if lower and upper:
            lo, hi = (self.gt, "(") if self.gt is not None else (self.ge, "[")
            up, close = (self.lt, ")") if self.lt is not None else (self.le, "]")
            return f"in {hi}{lo:g}, {up:g}{close}"
        return lower or upper or "finite"

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return True  # only numbers have bounds; types are checked elsewhere (is_number)
        return (math.isfinite(value)
                and (self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (a phrase: ``must be >= 1``), or None."""
        if isinstance(value, tuple | list):
            if self.min_len is not None and len(value) < self.min_len:
                return f"must have at least {self.min_len} element{'s' * (self.min_len != 1)}"
            bad = [v for v in value if not self.contains(v)]
            return f"every element must be {self}" if bad else None
        return None if self.contains(value) else f"must be {self}"


FINITE = Range()


def is_number(value: Any, integer: bool = False) -> bool:
    """Whether ``value`` (e.g. read from a JSON file) is a finite real number, an int when ``integer``; a bool never
    is. Bounds: ``Range(...).contains``."""
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        return False
    return math.isfinite(value)


def within(**bounds: Any) -> Mapping[str, Range]:
    """Dataclass field metadata declaring a range: ``epochs: int = field(metadata=within(ge=1))``."""
    return {"range": Range(**bounds)}
