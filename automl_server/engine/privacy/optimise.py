"""The optimiser of every attack here, as in the DLG reference: L-BFGS with
PyTorch's defaults (lr 1, at most 20 function evaluations per step), one
``step(closure)`` per iteration, 300 iterations by default."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

DEFAULT_ITERATIONS = 300  # the DLG paper and reference


class AttackStopped(Exception):
    """``should_stop`` said so (cancel or time budget); the attack's best so far is kept by the caller."""


@dataclass
class Trace:
    """The objective after each iteration (what the audit's report shows as convergence)."""

    losses: list[float] = field(default_factory=list)
    stopped_early: bool = False  # should_stop ended it before the last iteration


def lbfgs_minimise(variables: list[torch.Tensor], objective: Callable[[], torch.Tensor], iterations: int,
                   should_stop: Callable[[], bool] | None = None, line_search: str | None = None) -> Trace:
    """Minimise ``objective`` over ``variables`` (leaf tensors with requires_grad) in place.

    A non-finite objective (L-BFGS overshooting on a rugged surface) ends the run:
    the reference would carry NaNs on; we keep the last finite point instead."""
    optimizer = torch.optim.LBFGS(variables, line_search_fn=line_search)
    trace = Trace()
    saved = [v.detach().clone() for v in variables]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = objective()
        value.backward()
        return value

    for _ in range(iterations):
        if should_stop is not None and should_stop():
            trace.stopped_early = True
            break
        value = float(optimizer.step(closure).detach())
        if not math.isfinite(value) or not all(bool(torch.isfinite(v).all()) for v in variables):
            with torch.no_grad():
                for v, s in zip(variables, saved):
                    v.copy_(s)
            break
        for v, s in zip(variables, saved):
            s.copy_(v.detach())
        trace.losses.append(value)
    return trace
