"""How far under the user's latency target a job keeps its network's prediction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from automl_server.engine.derive import Derivation
    from automl_server.engine.latency import LatencyModel
    from automl_server.engine.supernet import SuperNet

# The job keeps the network's predicted latency a margin under the user's target
# (ours; the paper reports the argmax network, which may land on either side), so
# that the latency *measured* on the device meets the target too: a prediction
# right at the target is measured over it about half the time. The margin is the
# predictor's own measured error on this target: the 95th percentile of its
# relative error on networks left out of the fit (latency_db.heldout_error, over
# the calibration networks and every job's verified network of this space and
# resolution), within [MIN_TARGET_MARGIN, MAX_TARGET_MARGIN]. Where that is not
# known yet (fewer than 6 usable networks measured), the fallback is TARGET_MARGIN,
# or twice the calibration's relative RMSE on its own networks when larger (capped).
TARGET_MARGIN = 0.05
MIN_TARGET_MARGIN = 0.02
MAX_TARGET_MARGIN = 0.25
FALLBACK_MAX_MARGIN = 0.15


def target_margin(profile: dict[str, Any]) -> tuple[float, str]:
    """(margin, where it comes from) for a job whose profile stage gave ``profile``."""
    heldout = profile.get("predictor_error") or {}
    p95 = heldout.get("p95_rel_error")
    if isinstance(p95, (int, float)):
        margin = min(max(float(p95), MIN_TARGET_MARGIN), MAX_TARGET_MARGIN)
        return margin, (f"the predictor's held-out error on this target (95th percentile {p95:.1%} over "
                        f"{heldout.get('n_networks')} measured networks, leave-one-out)")
    calibration = profile.get("calibration") or {}
    margin = min(max(TARGET_MARGIN, 2.0 * float(calibration.get("rel_rmse", 0.0))), FALLBACK_MAX_MARGIN)
    return margin, ("no held-out error yet (fewer than 6 usable networks measured): 5%, or twice the "
                    "calibration's relative RMSE when larger")


# How wide the derivation's band is under its top: the derived network's prediction
# lies within aim * (1 +- BAND_TOLERANCE), whose upper end is the top. Until
# 2026-12-05 the band was as wide as the margin (aim * (1 +- margin)), so its bottom
# was target * (1 - m)^2 / (1 + m): 0.71-0.82 of the target with margins of 6-11%,
# and whole jobs measured 0.82-0.83 of their target (bench/bench_baselines_jobs.py):
# a user's latency budget left unspent on a slower, more accurate block. The margin
# is what keeps the measured latency under the target; the band's width only says
# how close under the top the derivation must come, so it need not grow with it.
# At 2% the greedy swaps of engine/derive.py still land inside from the spread
# probabilities a short search leaves (tests/engine/test_derive.py; a 0.1% band is
# reached about one time in ten); where no swap lands inside, the derivation keeps
# the network it reached under the top.
BAND_TOLERANCE = 0.02


@dataclass(frozen=True)
class TargetBand:
    """Where a job aims: the search's expected latency at ``aim_ms``; the derived
    network predicted within ``aim_ms * (1 +- tolerance)``, so at most ``top_ms`` =
    target * (1 - margin)."""

    margin: float
    top_ms: float
    tolerance: float
    aim_ms: float

    @property
    def low_ms(self) -> float:
        return self.aim_ms * (1 - self.tolerance)

    @classmethod
    def ending_at(cls, top_ms: float, margin: float, tolerance: float) -> TargetBand:
        """The band whose upper end, aim * (1 + tolerance), is ``top_ms``."""
        return cls(margin=margin, top_ms=top_ms, tolerance=tolerance, aim_ms=top_ms / (1 + tolerance))

    def under(self, top_ms: float) -> TargetBand:
        """The same band with its top moved to ``top_ms`` (the promise's retry)."""
        return TargetBand.ending_at(top_ms, self.margin, self.tolerance)


def band_for(target_ms: float, margin: float) -> TargetBand:
    return TargetBand.ending_at(target_ms * (1 - margin), margin, min(margin, BAND_TOLERANCE))


# The fit stage's window (jobs/fit.py), as fractions of the target: a network expected
# inside it uses the budget (at least 85% of the target, issue 17) and leaves room for the
# verify stage's own timing; a move aims at its middle.
WINDOW_LOW, WINDOW_AIM, WINDOW_HIGH = 0.87, 0.915, 0.96
# A move's predicted bound, as a share of the target (through the device's ratio): the top of
# a derivation band (BAND_TOLERANCE) *centred* on the window's middle, so that a move lands
# within 2% either side of it. Until 2026-12-07 the band ended at the middle, and every move
# landed in the window's lower half: the searched networks of three proxyless-mobile jobs at
# 32 px were kept at 87-88% of their target estimated, and measured at 0.84-0.88 of it.
MOVE_TOP = WINDOW_AIM * (1 + BAND_TOLERANCE)
# The bar a delivered network's measured latency is held to (issue 17's goal): within the
# target and at least this share of it. The fit also holds each try's own timing to it.
BUDGET_USED = 0.85


def into_window(net: SuperNet, model: LatencyModel, derived: Derivation, bound_ms: float,
                measured: list[list[str]]) -> Derivation:
    """``derived`` (the search's probabilities derived under ``bound_ms``, a move's top,
    ``MOVE_TOP``, in predicted terms), or, where its greedy swaps stepped under the window's
    bottom or back onto a network timed already, the most probable network predicted inside
    ``[bottom, bound_ms]`` not timed yet (``engine.derive.most_probable_within``), if the space
    has one. Without it the fit ended on "the derivation under ... gives no network not measured
    already" and kept a network timed at 0.851 of its target (tiny on digits at 8 px,
    2026-12-07): in the 2% band the job derives in, one swap up from it jumped over the window.
    The fit (jobs/fit.py) and, after a fit, the promise's retry (jobs/promise.py) move with it."""
    from automl_server.engine.derive import most_probable_within

    floor_ms = bound_ms * WINDOW_LOW / MOVE_TOP
    if derived.predicted_ms >= floor_ms and list(derived.arch.blocks) not in measured:
        return derived
    return most_probable_within(net, model, floor_ms, bound_ms, exclude=measured) or derived
