"""How far under the user's latency target a job keeps its network's prediction."""
from __future__ import annotations

from typing import Any

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
