"""Choosing a search's loss and schedule from the target and the dataset.

The reference's schedule (40 warm-up epochs, then one architecture step per
5 weight batches for 120 epochs) was written for ImageNet, 5,000 batches an
epoch. On a few hundred images an epoch is a couple of batches, and the same
rule gives a handful of architecture steps in a whole search: the
probabilities stay where they started and the derived network is a coin
toss. The functions here keep the reference's rule where the data is large
enough and, where it is not, count the warm-up and the architecture steps
in steps rather than epochs.

``loss_kind_for`` is the one place the job stage and ``automl search``
decide which latency loss a target allows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from search_spaces import SpaceLayout
from search_spaces.ops import ZERO
from search_spaces.spaces import op_key

from .latency import LatencyModel

# mul#log takes logarithms in units of target/80 (see engine.search.REFERENCE_TARGET_MS).
_REFERENCE_TARGET_MS = 80.0
# Weight steps on random paths before the first architecture step, at least. Below
# this the shared weights are still near their initialisation: the gate gradients
# are noise while the latency term's gradient is not, so the alphas drift towards
# the cheapest blocks (Zero) for no reason of accuracy. (The reference warms up for
# 40 ImageNet epochs, 200,000 steps; this is a floor for small data, not a match.)
# Counted per budget epoch, so that a job's default 10 warm-up epochs hold 100 steps
# and a deliberately short budget stays short.
MIN_WARMUP_STEPS_PER_EPOCH = 10
# Architecture steps per search epoch, at least (the reference makes 1,000 an epoch;
# the job's 30 search epochs then hold 300: Adam needs a few hundred to move a
# probability visibly, tests/engine/test_search_plan.py).
MIN_ARCH_STEPS_PER_EPOCH = 10


# A search's architecture learning rate, from its number of architecture steps (our rule;
# the reference fixes 1e-3). Adam with beta1 = 0 (the reference's) moves a logit by about
# the learning rate at each step whatever the gradient's scale, so S steps can move it
# S * lr at most. The reference's 1e-3 over ~10^5 ImageNet steps lets the probabilities
# settle; a job's 88-300 steps at 3e-3 left them next to uniform (proxyless-mobile on
# digits, 88 steps: the top probability per cell 0.157 on average against 0.150 uniform),
# so the derived network followed the latency model and the tie-breaks, not what the
# supernet had learned. ARCH_TRAVEL_NATS is the most a logit may travel in one search;
# at 9 (0.1 over 88 steps) the top probability reached 0.40 and the supernet's derived
# path 0.877 on holdout against 0.827 (bench/probe_supernet_signal.py --space
# proxyless-mobile "lr=0.05,arch_lr=3e-3" "lr=0.05,arch_lr=0.1", 2026-12-06).
# The bounds keep a large dataset's search at the reference's order (3e-3 from 3,000
# steps) and a tiny one's from jumping a whole logit per step.
ARCH_TRAVEL_NATS = 9.0
ARCH_LR_BOUNDS = (3e-3, 0.1)


def arch_lr_for(arch_steps: int) -> float:
    """ARCH_TRAVEL_NATS / arch_steps, within ARCH_LR_BOUNDS."""
    low, high = ARCH_LR_BOUNDS
    return min(max(ARCH_TRAVEL_NATS / max(arch_steps, 1), low), high)


def latency_range_ms(layout: SpaceLayout, latency_model: LatencyModel) -> tuple[float, float]:
    """Predicted latency of the space's fastest and slowest networks (cells are independent)."""
    fixed_ms = sum(latency_model.latency_ms(op_key(layout, layer)) for layer in layout.fixed)
    fastest = slowest = float(fixed_ms)
    for cell in layout.cells:
        costs = [0.0 if block == ZERO else latency_model.latency_ms(op_key(layout, cell, block))
                 for block in cell.candidates]
        fastest += min(costs)
        slowest += max(costs)
    return fastest, slowest


def loss_kind_for(target_ms: float, fastest_ms: float, slowest_ms: float) -> str:
    """The latency loss a target allows on this space and device.

    ``"none"`` when every network meets the target (accuracy alone counts);
    ``"add#linear"`` when the fastest networks are at or under target/80,
    where mul#log's logarithm (in units of target/80) would turn negative
    mid-search; else the paper's ``"mul#log"``.
    """
    if target_ms >= slowest_ms:
        return "none"
    if fastest_ms <= target_ms / _REFERENCE_TARGET_MS * 1.01:
        return "add#linear"
    return "mul#log"


def mul_log_refusal(target_ms: float, fastest_ms: float, slowest_ms: float) -> str | None:
    """Why mul#log cannot run at this target (None when it can): a clear message
    for a user who asked for it explicitly."""
    if fastest_ms > target_ms / _REFERENCE_TARGET_MS * 1.01:
        return None
    return (f"latency target {target_ms:g} ms is far above this space's networks ({fastest_ms:.4g}-{slowest_ms:.4g} ms "
            f"predicted): mul#log takes logarithms in units of target/80 = {target_ms / _REFERENCE_TARGET_MS:.4g} ms, "
            "and the faster networks fall under one unit, so the loss would fail mid-search. Choose a target within "
            "the range, or --loss auto (no latency term when every network meets the target) or add#linear")


@dataclass(frozen=True)
class SearchSchedule:
    """Epochs and architecture steps of a search on a dataset of a given size."""

    warmup_epochs: int
    search_epochs: int
    min_arch_steps_per_epoch: int  # SearchConfig.min_arch_steps_per_epoch
    batches_per_epoch: int
    arch_steps: int  # what the search will make
    changed: bool  # whether the dataset's size changed the asked-for epochs

    def describe(self) -> str:
        return (f"{self.batches_per_epoch} batches per epoch: {self.warmup_epochs} warm-up epochs "
                f"({self.warmup_epochs * self.batches_per_epoch} weight steps), {self.search_epochs} search epochs "
                f"with {self.arch_steps} architecture steps")


def arch_steps_per_epoch(batches: int, arch_update_every: int, min_per_epoch: int) -> int:
    """The reference's one step per ``arch_update_every`` batches, or ``min_per_epoch`` if more."""
    return max(batches // arch_update_every, min_per_epoch)


def arch_steps_after(batch: int, batches: int, arch_update_every: int, per_epoch: int) -> int:
    """How many architecture steps follow weight batch ``batch`` (0-based) of an epoch.

    The reference's rule ((batch + 1) % every == 0, one step) while it gives
    ``per_epoch`` steps; otherwise ``per_epoch`` steps spread evenly over the
    epoch's batches (several after one batch when there are more steps than
    batches, as the reference's ``grad_update_steps`` does).
    """
    if per_epoch <= batches // arch_update_every:
        return 1 if (batch + 1) % arch_update_every == 0 else 0
    return (batch + 1) * per_epoch // batches - batch * per_epoch // batches


def schedule_for(train_images: int, batch_size: int, warmup_epochs: int, search_epochs: int,
                 arch_update_every: int, *, min_warmup_steps_per_epoch: int = MIN_WARMUP_STEPS_PER_EPOCH,
                 min_arch_steps_per_epoch: int = MIN_ARCH_STEPS_PER_EPOCH) -> SearchSchedule:
    """A warm-up of at least ``min_warmup_steps_per_epoch`` weight steps per asked-for
    warm-up epoch, and at least ``min_arch_steps_per_epoch`` architecture steps in each
    search epoch, on ``train_images`` images.

    Large datasets keep the asked-for epochs and the reference's rule. On
    small ones the warm-up grows to that many weight steps (epochs
    there are cheap: a few batches each) and the search epochs hold more
    architecture steps, spread over their batches.
    """
    # As engine.data.BatchStream: the batch shrinks to the split, the last partial batch is dropped.
    batches = max(train_images // max(min(batch_size, train_images), 1), 1)
    warmup = max(warmup_epochs, math.ceil(min_warmup_steps_per_epoch * warmup_epochs / batches))
    per_epoch = arch_steps_per_epoch(batches, arch_update_every, min_arch_steps_per_epoch)
    return SearchSchedule(warmup_epochs=warmup, search_epochs=search_epochs,
                          min_arch_steps_per_epoch=min_arch_steps_per_epoch,
                          batches_per_epoch=batches, arch_steps=per_epoch * search_epochs,
                          changed=warmup != warmup_epochs or per_epoch != batches // arch_update_every)
