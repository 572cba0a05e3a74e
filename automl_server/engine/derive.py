"""Deriving a concrete network from the architecture probabilities.

The paper takes the argmax per cell (``SuperNet.derive``). That ignores the
latency target at the last step: the search optimises the *expected*
latency, and the argmax network can land far from it when the probabilities
are still spread (short searches, small datasets). ``derive_within_target``
is our addition for users who need the target met: the most probable network
whose predicted latency lies within ``tolerance`` of the target, found
greedily from the argmax by the swaps that cost the least log-probability per
millisecond moved. With ``tolerance`` large it returns the argmax unchanged.
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from automl_server.engine.latency import LatencyModel
from automl_server.engine.supernet import SuperNet
from search_spaces import Arch


@dataclass(frozen=True)
class Derivation:
    arch: Arch
    predicted_ms: float
    target_ms: float
    within_target: bool  # predicted latency inside target * (1 +- tolerance)
    fastest_ms: float  # the space's fastest and slowest networks, for "infeasible" messages
    slowest_ms: float
    swaps: int  # cells changed from the argmax


def derive_within_target(net: SuperNet, latency_model: LatencyModel, target_ms: float,
                         tolerance: float = 0.1) -> Derivation:
    if target_ms <= 0 or not 0 <= tolerance < 1:
        raise ValueError(f"need target_ms > 0 and 0 <= tolerance < 1, got {target_ms}, {tolerance}")
    fixed_ms = float(net.fixed_latency_ms(latency_model))
    latencies = [lat.detach().double().tolist() for lat in net.cell_latencies_ms(latency_model)]
    log_probs = [torch.log_softmax(op.alpha.detach().double(), 0).tolist() for op in net.mixed_ops]
    choice = [max(range(len(lp)), key=lp.__getitem__) for lp in log_probs]
    low, high = target_ms * (1 - tolerance), target_ms * (1 + tolerance)

    def total() -> float:
        return fixed_ms + sum(lat[c] for lat, c in zip(latencies, choice))

    swaps = 0
    current = total()
    # Too slow: cheapest swaps (log-probability lost per ms saved) until under the band's top.
    while current > high:
        best = _best_swap(latencies, log_probs, choice, faster=True, limit=None)
        if best is None:
            break  # nothing faster left: the target is below the space's fastest network
        cell, candidate = best
        current += latencies[cell][candidate] - latencies[cell][choice[cell]]
        choice[cell] = candidate
        swaps += 1
    # Too fast: spend the slack on the most probable slower blocks, never leaving the band.
    while current < low:
        best = _best_swap(latencies, log_probs, choice, faster=False, limit=high - current)
        if best is None:
            break
        cell, candidate = best
        current += latencies[cell][candidate] - latencies[cell][choice[cell]]
        choice[cell] = candidate
        swaps += 1
    layout = net.layout
    arch = Arch(space=layout.space, resolution=layout.resolution, num_classes=layout.num_classes,
                in_channels=layout.in_channels,
                blocks=tuple(op.candidates[c] for op, c in zip(net.mixed_ops, choice)))
    fastest = fixed_ms + sum(min(lat) for lat in latencies)
    slowest = fixed_ms + sum(max(lat) for lat in latencies)
    return Derivation(arch=arch, predicted_ms=current, target_ms=target_ms, within_target=low <= current <= high,
                      fastest_ms=fastest, slowest_ms=slowest, swaps=swaps)


def _best_swap(latencies: list[list[float]], log_probs: list[list[float]], choice: list[int], *, faster: bool,
               limit: float | None) -> tuple[int, int] | None:
    """(cell, candidate) with the least log-probability lost per ms moved in the wanted direction."""
    best: tuple[float, int, int] | None = None
    for cell, (lat, lp) in enumerate(zip(latencies, log_probs)):
        here = choice[cell]
        for candidate, candidate_ms in enumerate(lat):
            delta = candidate_ms - lat[here]
            if (delta >= 0) if faster else (delta <= 0):
                continue
            if limit is not None and delta > limit:
                continue
            cost = max(lp[here] - lp[candidate], 0.0) / abs(delta)
            if best is None or cost < best[0]:
                best = (cost, cell, candidate)
    return None if best is None else (best[1], best[2])


def most_probable_within(net: SuperNet, latency_model: LatencyModel, low_ms: float, high_ms: float,
                         exclude: Iterable[Sequence[str]] = (), bins: int = 2000, keep: int = 4) -> Derivation | None:
    """The most probable network (sum of the cells' log-probabilities) predicted inside
    ``[low_ms, high_ms]``, none of ``exclude`` (block sequences); None when the search finds none.

    Why, beside ``derive_within_target``: its greedy swaps walk one path from the argmax, and
    where one swap jumps over a narrow band they stop on the far side of it, whatever other
    networks lie inside. The fit stage (jobs/fit.py) asks for a band 5% wide in which the
    derivation had returned, under a raised bound, the very network already measured under
    it (tiny at 8 px, 2026-12-07: a network timed at 0.851 of the target kept for want of
    another). This searches the whole space, cell by cell, as a knapsack over predicted
    latency: for each of ``bins`` latency bins the ``keep`` most probable partial networks
    (plus one per excluded network), pruning any whose remaining cells cannot land inside
    the band. Exact up to the bins' width (a partial network dropped from a full bin had a
    more probable one of nearly its latency kept)."""
    if not 0 < low_ms <= high_ms:
        raise ValueError(f"need 0 < low_ms <= high_ms, got {low_ms}, {high_ms}")
    fixed_ms = float(net.fixed_latency_ms(latency_model))
    latencies = [lat.detach().double().tolist() for lat in net.cell_latencies_ms(latency_model)]
    log_probs = [torch.log_softmax(op.alpha.detach().double(), 0).tolist() for op in net.mixed_ops]
    fastest = fixed_ms + sum(min(lat) for lat in latencies)
    slowest = fixed_ms + sum(max(lat) for lat in latencies)
    # Fastest and slowest latency the cells after each position can add.
    rest_min = [sum(min(lat) for lat in latencies[i:]) for i in range(len(latencies) + 1)]
    rest_max = [sum(max(lat) for lat in latencies[i:]) for i in range(len(latencies) + 1)]
    excluded = {tuple(blocks) for blocks in exclude}
    width = max((slowest - fastest) / bins, 1e-12)
    per_bin = keep + len(excluded)
    # Partial networks: (log-probability, predicted ms so far, choices).
    states: list[tuple[float, float, tuple[int, ...]]] = [(0.0, fixed_ms, ())]
    for cell, (lat, lp) in enumerate(zip(latencies, log_probs)):
        grown: dict[int, list[tuple[float, float, tuple[int, ...]]]] = {}
        for score, ms, choice in states:
            for candidate, (cell_ms, cell_lp) in enumerate(zip(lat, lp)):
                total = ms + cell_ms
                if total + rest_min[cell + 1] > high_ms or total + rest_max[cell + 1] < low_ms:
                    continue  # the band is out of reach whatever the later cells take
                grown.setdefault(int((total - fixed_ms) / width), []).append(
                    (score + cell_lp, total, choice + (candidate,)))
        states = [entry for entries in grown.values() for entry in heapq.nlargest(per_bin, entries)]
    layout = net.layout
    for score, ms, choice in sorted(states, key=lambda s: -s[0]):
        blocks = tuple(op.candidates[c] for op, c in zip(net.mixed_ops, choice))
        if blocks in excluded or not low_ms <= ms <= high_ms:
            continue
        arch = Arch(space=layout.space, resolution=layout.resolution, num_classes=layout.num_classes,
                    in_channels=layout.in_channels, blocks=blocks)
        argmax = [max(range(len(lp)), key=lp.__getitem__) for lp in log_probs]
        return Derivation(arch=arch, predicted_ms=ms, target_ms=(low_ms + high_ms) / 2, within_target=True,
                          fastest_ms=fastest, slowest_ms=slowest,
                          swaps=sum(c != a for c, a in zip(choice, argmax)))
    return None
