"""How well predicted latencies match measured ones: the figures latency-predictor papers report.

``within_pct`` is nn-Meter's headline figure (share within +-10%); Kendall's
tau-b says whether the predictor ranks networks correctly, which is what a
search needs even when the absolute values are off.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# What the functions take: a list of floats, or a float array (which compare passes on).
Floats = Sequence[float] | npt.NDArray[np.floating[Any]]


def within_pct(predicted: Floats, measured: Floats, pct: float = 10) -> float:
    """The share (0..1) of networks whose prediction is within +-pct % of the measured latency."""
    p, m = _pair("within_pct", predicted, measured)
    if not pct >= 0 or not math.isfinite(pct):
        raise ValueError(f"pct must be a finite number >= 0, got {pct!r}")
    if np.any(m <= 0):
        raise ValueError("within_pct needs measured latencies > 0 (the error is relative to them)")
    # A tiny tolerance so that an error of exactly pct % counts as within despite float rounding.
    return float(np.mean(np.abs(p - m) <= m * pct / 100 * (1 + 1e-12)))


def kendall_tau(a: Floats, b: Floats) -> float:
    """Kendall's tau-b rank correlation of two paired sequences, in [-1, 1].

    tau_b = (C - D) / sqrt((n0 - n1) * (n0 - n2)), n0 = n(n-1)/2 pairs, n1 and
    n2 the pairs tied in a and in b. NaN when every value of a (or of b) is
    equal, as in scipy: no ranking to compare.
    """
    x, y = _pair("kendall_tau", a, b)
    if x.size < 2:
        raise ValueError(f"kendall_tau needs at least 2 pairs, got {x.size}")
    i, j = np.triu_indices(x.size, k=1)  # every pair once; O(n^2) memory is fine for evaluation sets
    dx = np.sign(x[i] - x[j])
    dy = np.sign(y[i] - y[j])
    concordant_minus_discordant = float(np.sum(dx * dy))
    n0 = float(i.size)
    untied_x = n0 - float(np.sum(dx == 0))
    untied_y = n0 - float(np.sum(dy == 0))
    if untied_x == 0 or untied_y == 0:
        return math.nan
    return concordant_minus_discordant / math.sqrt(untied_x * untied_y)


@dataclass(frozen=True)
class PredictorReport:
    """A predictor's accuracy on networks measured end to end on one target."""

    n_networks: int
    pct: float  # the tolerance of within_share, in percent
    within_share: float  # share of networks predicted within +-pct %
    kendall_tau: float  # rank agreement (tau-b); NaN if all predictions or measurements are equal
    mean_abs_pct_error: float  # mean of |predicted - measured| / measured, in percent
    max_abs_pct_error: float

    @classmethod
    def compare(cls, predicted: Sequence[float], measured: Sequence[float], pct: float = 10) -> PredictorReport:
        p, m = _pair("PredictorReport.compare", predicted, measured)
        share = within_pct(p, m, pct)  # also checks that measured > 0
        errors = np.abs(p - m) / m * 100
        return cls(
            n_networks=int(p.size),
            pct=float(pct),
            within_share=share,
            kendall_tau=kendall_tau(p, m) if p.size >= 2 else math.nan,
            mean_abs_pct_error=float(errors.mean()),
            max_abs_pct_error=float(errors.max()),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line, e.g. ``12 networks: 91.7% within +-10%, Kendall tau 0.94, mean error 4.1%``."""
        return (
            f"{self.n_networks} networks: {self.within_share:.1%} within +-{self.pct:g}%, "
            f"Kendall tau {self.kendall_tau:.2f}, mean error {self.mean_abs_pct_error:.1f}%"
        )


def _pair(name: str, a: Floats, b: Floats) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.ndim != 1 or y.ndim != 1 or x.size != y.size:
        raise ValueError(f"{name} needs two flat sequences of the same length, got {x.shape} and {y.shape}")
    if x.size == 0:
        raise ValueError(f"{name} needs at least one pair")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"{name} needs finite numbers")
    return x, y
