"""Statistics over seeds and how the page writes them: mean ± sample std, verdicts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# AURC in percent: a good 10-class model's is a few hundredths of a percent.
AURC_DIGITS = 3


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1) over the seeds whose value is defined; std is None with
    one value. ``undefined`` counts the seeds whose value is undefined (None): they are left out, and said."""

    values: tuple[float, ...]
    undefined: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None


def stat(values: Iterable[float | None]) -> Stat:
    given = list(values)
    return Stat(tuple(float(v) for v in given if v is not None), sum(v is None for v in given))


def fmt(s: Stat, scale: float = 100.0, digits: int = 1, signed: bool = False, undefined: str = "–") -> str:
    """``mean ± std`` (scaled, e.g. to percent); the mean alone for one seed; ``undefined`` when no seed has
    a value, and "(k of n seeds defined)" after the numbers when only some have one: never a 0.

    ``signed`` writes a + on a positive mean, for differences.
    """
    if s.mean is None:
        return undefined
    text = f"{s.mean * scale:{'+' if signed else ''}.{digits}f}"
    if s.std is not None:
        text += f" ± {s.std * scale:.{digits}f}"
    return text + (f" ({s.n} of {s.n + s.undefined} seeds defined)" if s.undefined else "")


def seeds_text(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def verdict(wins: int, n: int, strong: bool = True) -> str:
    """reproduced: better in every seed (and ``strong``); partly: in most seeds or not strong; else not."""
    if n and wins == n and strong:
        return "reproduced"
    if n and 2 * wins > n:
        return "partly reproduced"
    return "not reproduced"
