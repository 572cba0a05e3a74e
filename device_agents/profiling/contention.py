"""Measurements that know when they are wrong (issue 18, part 1).

A latency timed while something else ran on the device's cores is wrong in
a way the yardstick only partly corrects. Each measurement carries its
evidence (``method.measure`` records ``cv``, ``yardstick_drift``,
``cpu_share`` and ``load_avg``; ``device_agents.cores`` whether the cores
were shared with training); ``noise_reasons`` judges it against the method's
bounds, and ``measure_checked`` retakes a noisy measurement up to
``method.retakes`` times. What stays noisy is *kept and flagged*
(``method["reliable"] = False`` with ``unreliable_reason``), never silently
kept: the latency database stores the flag, and an unreliable network never
calibrates a predictor (``LatencyRepository.networks(usable_only=True)``).
The load average is evidence only: on a shared VM it counts every tenant.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from device_agents import cores
from device_agents.profiling.method import MeasurementMethod
from latency_db.records import MeasurementStats

# The evidence of each attempt kept in the stored method (the kept one's is the method itself).
_EVIDENCE = ("cv", "yardstick_drift", "cpu_share", "load_avg", "cores_shared_with_training", "median_ms")


def noise_reasons(stats: MeasurementStats, method: MeasurementMethod) -> list[str]:
    """Why ``stats`` is too noisy to keep under ``method``'s bounds; empty when it is fine."""
    found = stats.method
    reasons = []
    if found.get("cores_shared_with_training"):
        reasons.append(f"the cores were shared with training (it did not pause within "
                       f"{found.get('cores_waited_s', 0):.3g} s)")
    drift = found.get("yardstick_drift")
    if isinstance(drift, (int, float)) and drift > method.max_yardstick_drift:
        reasons.append(f"the yardstick moved {drift:.0%} within the measurement (bound {method.max_yardstick_drift:.0%})")
    if stats.cv > method.max_cv:
        reasons.append(f"coefficient of variation {stats.cv:.3f} > {method.max_cv:g}")
    share = found.get("cpu_share")
    if isinstance(share, (int, float)) and share < method.min_cpu_share:
        reasons.append(f"the measuring thread was on a CPU {share:.0%} of the time (bound {method.min_cpu_share:.0%}): "
                       "something else ran on its core")
    return reasons


def measure_checked(take: Callable[[], MeasurementStats], method: MeasurementMethod, *,
                    cores_wait_s: float = cores.MEASURE_WAIT_S) -> MeasurementStats:
    """``take()`` with the machine's cores held (``device_agents.cores``), retaken
    while noisy, at most ``method.retakes`` more times. Returns the first clean
    attempt, else the least noisy one flagged ``reliable: False`` with the
    reasons; ``method["attempts"]`` counts them and ``method["retaken"]`` keeps
    the evidence of the ones not kept."""
    attempts: list[tuple[MeasurementStats, list[str]]] = []
    for _ in range(1 + method.retakes):
        with cores.measuring(cores_wait_s) as grant:
            stats = take()
        stats = replace(stats, method={**stats.method, **grant.evidence()})
        reasons = noise_reasons(stats, method)
        attempts.append((stats, reasons))
        if not reasons:
            break
    kept_index = min(range(len(attempts)), key=lambda i: (len(attempts[i][1]), attempts[i][0].cv))
    kept, reasons = attempts[kept_index]
    retaken = [{**_evidence(s), "reasons": r} for i, (s, r) in enumerate(attempts) if i != kept_index]
    return replace(kept, method={**kept.method, "attempts": len(attempts), "retaken": retaken,
                                 "reliable": not reasons,
                                 "unreliable_reason": "; ".join(reasons) if reasons else None})


def _evidence(stats: MeasurementStats) -> dict[str, Any]:
    values = {"cv": round(stats.cv, 4), "median_ms": stats.median_ms}
    values.update({k: stats.method[k] for k in _EVIDENCE if k in stats.method and k not in values})
    return values
