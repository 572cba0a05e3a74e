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
# 40 ImageNet epochs, 200,000 steps; 200 is a floor for small data, not a match.)
MIN_WARMUP_STEPS = 200
# Architecture steps per search, at least (the reference makes 120 epochs x
# 1,000 = 120,000; Adam at lr 1e-3 needs a few hundred to move a probability visibly).
MIN_ARCH_STEPS = 300


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
    min_arch_steps: int  # SearchConfig.min_arch_steps: architecture steps over the search, at least
    batches_per_epoch: int
    arch_steps: int  # what the search will make
    changed: bool  # whether the dataset's size changed the asked-for epochs

    def describe(self) -> str:
        return (f"{self.batches_per_epoch} batches per epoch: {self.warmup_epochs} warm-up epochs "
                f"({self.warmup_epochs * self.batches_per_epoch} weight steps), {self.search_epochs} search epochs "
                f"with {self.arch_steps} architecture steps")


def arch_steps_per_epoch(batches: int, arch_update_every: int, search_epochs: int, min_arch_steps: int) -> int:
    """The reference's one step per ``arch_update_every`` batches, or more so that
    ``search_epochs`` epochs make at least ``min_arch_steps``."""
    reference = batches // arch_update_every
    if search_epochs <= 0:
        return reference
    return max(reference, math.ceil(min_arch_steps / search_epochs))


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
                 arch_update_every: int, *, min_warmup_steps: int = MIN_WARMUP_STEPS,
                 min_arch_steps: int = MIN_ARCH_STEPS) -> SearchSchedule:
    """Warm-up long enough for ``min_warmup_steps`` weight steps and a search of
    at least ``min_arch_steps`` architecture steps, on ``train_images`` images.

    Large datasets keep the asked-for epochs and the reference's rule. On
    small ones the warm-up grows to ``min_warmup_steps`` weight steps (epochs
    there are cheap: a few batches each) and the search epochs hold more
    architecture steps, spread over their batches.
    """
    # As engine.data.BatchStream: the batch shrinks to the split, the last partial batch is dropped.
    batches = max(train_images // max(min(batch_size, train_images), 1), 1)
    warmup = max(warmup_epochs, math.ceil(min_warmup_steps / batches)) if search_epochs > 0 else warmup_epochs
    per_epoch = arch_steps_per_epoch(batches, arch_update_every, search_epochs, min_arch_steps)
    return SearchSchedule(warmup_epochs=warmup, search_epochs=search_epochs, min_arch_steps=min_arch_steps,
                          batches_per_epoch=batches, arch_steps=per_epoch * search_epochs,
                          changed=warmup != warmup_epochs or per_epoch != batches // arch_update_every)
