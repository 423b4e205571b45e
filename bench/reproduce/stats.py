"""Statistics over seeds and how the page writes them: mean ± sample std, verdicts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# AURC in percent: a good 10-class model's is a few hundredths of a percent.
AURC_DIGITS = 3


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1) over seeds; std is None with one value."""

    values: tuple[float, ...]

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
    return Stat(tuple(float(v) for v in values if v is not None))


def fmt(s: Stat, scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
    """``mean ± std`` (scaled, e.g. to percent); the mean alone for one seed; an en dash for no value.

    ``signed`` writes a + on a positive mean, for differences.
    """
    if s.mean is None:
        return "–"
    text = f"{s.mean * scale:{'+' if signed else ''}.{digits}f}"
    return text if s.std is None else f"{text} ± {s.std * scale:.{digits}f}"


def seeds_text(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def verdict(wins: int, n: int, strong: bool = True) -> str:
    """reproduced: better in every seed (and ``strong``); partly: in most seeds or not strong; else not."""
    if n and wins == n and strong:
        return "reproduced"
    if n and 2 * wins > n:
        return "partly reproduced"
    return "not reproduced"
