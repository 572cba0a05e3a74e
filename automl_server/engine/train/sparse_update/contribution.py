"""Contribution analysis (Lin et al. 2022, Sec. 3.2): how much accuracy each part of
the network adds when it is updated, measured on the job's own data.

- ``bias_gain[k]``: accuracy gain of updating the biases of the last k conv
  layers (with the classifier) over updating the classifier alone;
- ``weight_gain[(i, r)]``: gain of updating a ratio r of the channels of layer
  i's weight (with the classifier) over the classifier alone.

Each gain comes from a short fine-tune from the same starting weights over the
same batches, evaluated on the holdout split (the training split when there is
none). The search then assumes the gains add up, as the paper does.

Deviations: the paper fine-tunes each candidate on the full downstream set;
here each is ``steps`` batches long (the analysis must fit in a job). For deep
networks the bias gains are measured at up to ``max_bias_points`` values of k
and interpolated linearly in between. A weight candidate whose memory alone
exceeds the budget is not measured: the search could never choose it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from automl_server.engine.data import BatchStream
from automl_server.engine.train.sparse_update.network import SparseNet
from automl_server.engine.train.sparse_update.scheme import WEIGHT_RATIOS, LayerUpdate, SparseScheme
from automl_server.engine.train.sparse_update.training import FineTuneConfig, train_batches
from automl_server.engine.train.standard import evaluate

EVAL_SAMPLES = 1000  # the analysis ranks candidates; a capped evaluation set is enough


@dataclass
class Contributions:
    base_accuracy: float  # classifier only
    bias_gain: dict[int, float] = field(default_factory=dict)  # measured k -> gain
    weight_gain: dict[tuple[int, float], float] = field(default_factory=dict)

    def bias_gain_at(self, k: int) -> float:
        """The gain of k bias layers (0 for none), interpolated between measured k."""
        if k <= 0 or not self.bias_gain:
            return 0.0
        if k in self.bias_gain:
            return self.bias_gain[k]
        points = sorted([(0, 0.0), *self.bias_gain.items()])
        for (k0, g0), (k1, g1) in zip(points, points[1:]):
            if k0 <= k <= k1:
                return g0 + (g1 - g0) * (k - k0) / (k1 - k0)
        return points[-1][1]

    def to_dict(self) -> dict[str, Any]:
        return {"base_accuracy": self.base_accuracy,
                "bias_gain": {str(k): g for k, g in sorted(self.bias_gain.items())},
                "weight_gain": [{"layer": i, "ratio": r, "gain": g} for (i, r), g in sorted(self.weight_gain.items())]}


def bias_points(n_layers: int, max_points: int) -> list[int]:
    """The k at which bias gains are measured: all of 1..n, or an even grid ending at n."""
    if n_layers <= max_points:
        return list(range(1, n_layers + 1))
    return sorted({max(1, round(n_layers * j / max_points)) for j in range(1, max_points + 1)})


def analyse_contributions(net: SparseNet, x_train: torch.Tensor, y_train: torch.Tensor, x_eval: torch.Tensor,
                          y_eval: torch.Tensor, config: FineTuneConfig, *, steps: int,
                          fits: Callable[[SparseScheme], bool], max_bias_points: int = 16,
                          on_candidate: Callable[[int, int], None] | None = None) -> Contributions:
    """Measure every candidate's gain; ``net`` ends at its starting weights, every layer
    frozen. ``fits`` says whether a scheme's memory is within the budget;
    ``on_candidate(done, total)`` runs after each candidate (it may raise to cancel)."""
    n = len(net.layers)
    if not len(y_eval):
        x_eval, y_eval = x_train, y_train
    x_eval, y_eval = x_eval[:EVAL_SAMPLES], y_eval[:EVAL_SAMPLES]
    stream = BatchStream(x_train, y_train, config.batch_size, config.seed + 31)
    batches = [stream.next() for _ in range(steps)]  # every candidate sees the same batches
    start = net.snapshot()
    frozen = [LayerUpdate(False, 0.0)] * n

    bias_ks = bias_points(n, max_bias_points)
    weight_candidates = [(i, r) for i in range(n) for r in WEIGHT_RATIOS
                         if fits(SparseScheme(n - i, ((i, r),)))]
    candidates: list[list[LayerUpdate] | None] = [None]  # None: the classifier alone
    for k in bias_ks:
        candidates.append([LayerUpdate(i >= n - k, 0.0) for i in range(n)])
    for i, r in weight_candidates:
        updates = list(frozen)
        updates[i] = LayerUpdate(False, r)
        candidates.append(updates)

    accuracies = []
    try:
        for done, candidate in enumerate(candidates, start=1):
            net.restore(start)
            net.apply_updates(candidate or frozen)
            train_batches(net, batches, config)
            accuracies.append(evaluate(net, x_eval, y_eval))
            if on_candidate is not None:
                on_candidate(done, len(candidates))
    finally:
        net.restore(start)
    base = accuracies[0]
    result = Contributions(base_accuracy=base)
    result.bias_gain = {k: acc - base for k, acc in zip(bias_ks, accuracies[1:1 + len(bias_ks)])}
    result.weight_gain = {cand: acc - base for cand, acc in zip(weight_candidates, accuracies[1 + len(bias_ks):])}
    return result
