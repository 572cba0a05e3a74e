"""Latency-aware architecture loss (ProxylessNAS reference loss types).

``mul#log``:    a * CE * (ln E[LAT] / ln T) ** beta     (reference search script: a=0.2, beta=0.3)
``add#linear``: CE + lam * (E[LAT] - T) / T            (reference lambda 0.1-0.2)
``add#abs``:    CE + lam * |E[LAT] - T| / T             (extension, see below)
``none``:       CE

The paper's two forms reward every millisecond saved: their gradient pushes
E[LAT] down whether it is above or below T, so a loose target does not pull a
search towards bigger, more accurate networks, and the derived latency can
land far below T. ``add#abs`` is the absolute-value objective of TuNAS (Bender
et al., CVPR 2020, reward Q + beta * |T(a)/T0 - 1|): its gradient changes sign
at T, so the search tracks the target from both sides. It is an addition to
the paper's loss types, not a replacement; the defaults stay the paper's.

Units for mul#log (the formula needs ln T > 0 and ln E[LAT] > 0): the
reference takes the logs of latencies in ms, which breaks for targets of 1 ms
or less (ln T <= 0: the ratio flips sign or divides by zero) and gives NaN
once E[LAT] falls under 1 ms (a negative base to a fractional power). The logs
here are of latencies in units of ``log_unit_ms``: the default 1.0 keeps the
reference's numbers (its a and beta were tuned in ms), and a target or
expected latency at or below one unit raises ValueError naming the fix, never
NaN. For targets of a few ms or less pass ``log_unit_ms=1e-3``
(microseconds, where every real latency exceeds one unit); the penalty is then
gentler for the same beta (ln 5000 / ln 4000 vs. ln 5 / ln 4), so raise beta
to compensate.
"""
from __future__ import annotations

import math

import torch

LOSS_KINDS = ("mul#log", "add#linear", "add#abs", "none")


def latency_loss(
    ce: torch.Tensor,
    expected_ms: torch.Tensor | float,
    target_ms: float,
    kind: str | None = "mul#log",
    a: float = 0.2,
    beta: float = 0.3,
    lam: float = 0.1,
    log_unit_ms: float = 1.0,
) -> torch.Tensor:
    """The architecture-step loss; differentiable in ``ce`` and ``expected_ms``.

    ``kind=None`` means ``"none"`` (the reference's spelling). The defaults
    a=0.2, beta=0.3 are those of the reference's search script
    (``search/imagenet_arch_search.py``, ``--grad_reg_loss_alpha/beta``); 1 and
    0.6 are only its config class's fallbacks, which that script overrides.
    """
    kind = "none" if kind is None else kind
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown latency loss kind {kind!r}; accepted: {', '.join(LOSS_KINDS)}")
    if kind == "none":
        return ce
    if not (math.isfinite(target_ms) and target_ms > 0):
        raise ValueError(f"target_ms must be a finite latency > 0 ms, got {target_ms!r}")
    expected = torch.as_tensor(expected_ms, dtype=ce.dtype, device=ce.device)
    if kind == "add#linear":
        return ce + lam * (expected - target_ms) / target_ms
    if kind == "add#abs":
        return ce + lam * torch.abs(expected - target_ms) / target_ms
    # mul#log
    if not (math.isfinite(log_unit_ms) and log_unit_ms > 0):
        raise ValueError(f"log_unit_ms must be a finite positive number of ms, got {log_unit_ms!r}")
    target_units = target_ms / log_unit_ms
    if target_units <= 1.0:
        raise ValueError(
            f"mul#log needs target_ms > log_unit_ms (ln of the target must be > 0); got target_ms={target_ms} "
            f"with log_unit_ms={log_unit_ms}; use a smaller log_unit_ms (1e-3 = microseconds) or kind='add#linear'"
        )
    expected_units = expected / log_unit_ms
    smallest = float(expected_units.detach().min())
    if not smallest > 1.0:
        raise ValueError(
            f"mul#log needs expected latency > log_unit_ms, got {smallest * log_unit_ms} ms with "
            f"log_unit_ms={log_unit_ms}; use a smaller log_unit_ms or kind='add#linear'"
        )
    return a * ce * (torch.log(expected_units) / math.log(target_units)) ** beta
