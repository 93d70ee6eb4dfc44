"""Streaming statistics for ``summarize``: bounded memory, one value at a time.

``BoundedCounter`` counts values exactly up to a cap, then by Misra-Gries;
``ColumnStats`` keeps one column's count, missing cells and distinct values,
and while every value is a number its min/max, Welford mean and variance and a
compensated sum. Pure: no I/O, stdlib only.
"""

from __future__ import annotations

import math
import re
from typing import Any

DISTINCT_CAP = 1000  #: exact distinct values per column before Misra-Gries
MAX_VALUE_CHARS = 200  #: values are counted by this prefix
TOP_VALUES = 5  #: most common values listed per text column
MISSING_TOKENS = frozenset({"", "na", "n/a", "null", "nan"})  #: case-insensitive

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


class BoundedCounter:
    """Exact counts of up to `capacity` distinct values, then Misra-Gries.

    Past the cap it keeps at most `capacity` candidates: every value seen more
    than n/(capacity+1) times survives, with a count low by at most that much.
    A full decrement pass costs O(capacity) but removes capacity+1 from the
    total, so the amortized cost per value stays O(1).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.counts: dict[str, int] = {}
        self.exact = True

    def add(self, value: str) -> None:
        counts = self.counts
        if value in counts:
            counts[value] += 1
        elif len(counts) < self.capacity:
            counts[value] = 1
        else:
            self.exact = False
            self.counts = {k: c - 1 for k, c in counts.items() if c > 1}

    def distinct(self) -> int:
        return len(self.counts) if self.exact else self.capacity

    def top(self, n: int) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


class ColumnStats:
    """Streaming statistics of one column; its type is decided at the end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = self.missing = 0
        self.numeric = self.integral = True  # until a value proves otherwise
        self.mean = self.m2 = self.fsum = self.fcomp = 0.0
        self.isum = 0
        self.min: float | int | None = None
        self.max: float | int | None = None
        self.values = BoundedCounter(DISTINCT_CAP)

    def add_text(self, raw: str, *, parse_numbers: bool = True) -> None:
        value = raw.strip()
        if value.lower() in MISSING_TOKENS:
            self.missing += 1
            return
        self.count += 1
        self.values.add(value[:MAX_VALUE_CHARS])
        if not self.numeric:
            return
        if parse_numbers and len(value) <= 64 and _NUMBER.fullmatch(value):
            number = float(value)
            if math.isfinite(number):
                self._add_number(int(value) if _INTEGER.fullmatch(value) else number)
                return
        self.numeric = False

    def add_number(self, number: float) -> None:
        self.count += 1
        self.values.add(repr(number)[:MAX_VALUE_CHARS])
        try:
            finite = math.isfinite(number)
        except OverflowError:  # an integer too large for a float
            finite = False
        if self.numeric and finite:
            self._add_number(number)
        else:
            self.numeric = False

    def _add_number(self, number: float) -> None:
        x = float(number)
        n = self.count  # already counts this value, and every earlier one was numeric
        delta = x - self.mean  # Welford: numerically stable mean and variance
        self.mean += delta / n
        self.m2 += delta * (x - self.mean)
        total = self.fsum + x  # Neumaier-compensated float sum
        big, small = (self.fsum, x) if abs(self.fsum) >= abs(x) else (x, self.fsum)
        self.fcomp += (big - total) + small
        self.fsum = total
        if isinstance(number, int) and self.integral:
            self.isum += number
        else:
            self.integral = False
        self.min = number if self.min is None or number < self.min else self.min
        self.max = number if self.max is None or number > self.max else self.max

    def to_dict(self) -> dict[str, Any]:
        kind = "empty" if not self.count else "numeric" if self.numeric else "text"
        out: dict[str, Any] = {"name": self.name, "type": kind, "count": self.count,
                               "missing": self.missing, "distinct": self.values.distinct(),
                               "distinct_capped": not self.values.exact}
        if kind == "numeric":
            cast = int if self.integral else float
            out.update(min=cast(self.min), max=cast(self.max),  # type: ignore[arg-type]
                       sum=self.isum if self.integral else self.fsum + self.fcomp,
                       mean=self.mean,
                       stddev=math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else None)
        elif kind == "text":
            out["top"] = [{"value": v, "count": c} for v, c in self.values.top(TOP_VALUES)]
            out["top_exact"] = self.values.exact
        return out
