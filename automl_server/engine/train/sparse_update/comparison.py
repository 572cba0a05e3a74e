"""Training memory of one step, side by side: full update (PyTorch's own
autograd), last layer only, the scheme without and with reordering.
Each is predicted from the shapes and measured: bytes saved for backward
(counted by ``saved_tensors_hooks``) + gradient buffers alive at once +
optimizer state (the analytic sum the budget is counted in), and the peak
of tensor bytes alive at the worst moment of the step (``live_memory``)."""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from automl_server.engine.train.sparse_update.live_memory import PeakTensorMemory, StepPeak
from automl_server.engine.train.sparse_update.memory import MemoryFigures, count_saved_tensors, predict_memory
from automl_server.engine.train.sparse_update.network import SparseNet
from automl_server.engine.train.sparse_update.peak_rss import Variant
from automl_server.engine.train.sparse_update.scheme import SparseScheme, classifier_only, full
from automl_server.engine.train.sparse_update.updater import SparseUpdater


def comparison_variants(scheme: SparseScheme, n_layers: int) -> list[Variant]:
    return [Variant("full_update", full(n_layers), reorder=False, plain_autograd=True),
            Variant("full_update_reordered", full(n_layers), reorder=True, plain_autograd=True),
            Variant("last_layer_only", classifier_only(), reorder=False),
            Variant("scheme_without_reordering", scheme, reorder=False),
            Variant("scheme", scheme, reorder=True)]


def measure_step(net: SparseNet, variant: Variant, x: torch.Tensor, y: torch.Tensor, *, lr: float,
                 momentum: float) -> tuple[MemoryFigures, StepPeak]:
    """One counted step on a copy of ``net`` (after a warm-up step, so optimizer state exists):
    the accounting of ``memory.MemoryFigures``, and the peak of live tensor bytes."""
    trial = copy.deepcopy(net)
    trial.apply_scheme(variant.scheme, plain_autograd=variant.plain_autograd)
    updater = SparseUpdater(trial.trainable_parameters(), lr=lr, momentum=momentum, reorder=variant.reorder)
    try:
        updater.step(F.cross_entropy(trial(x), y))
        existing = [*trial.parameters(), *trial.buffers(), x, y, *updater.state_tensors()]
        with PeakTensorMemory(updater.params, existing) as peak:
            with count_saved_tensors(trial) as counter:
                loss = F.cross_entropy(trial(x), y)
            updater.step(loss)
            del loss  # the graph's last references: the step is over
        grad_bytes = updater.grad_peak_bytes
        return MemoryFigures(counter.bytes, grad_bytes, grad_bytes, updater.state_bytes()), peak.result()
    finally:
        updater.close()


def memory_comparison(net: SparseNet, scheme: SparseScheme, x: torch.Tensor, y: torch.Tensor, *, lr: float,
                      momentum: float) -> dict[str, dict[str, Any]]:
    """Per variant: predicted and measured bytes of one step at this batch."""
    frozen = copy.deepcopy(net)
    frozen.restore(frozen.snapshot())
    rows: dict[str, dict[str, Any]] = {}
    for variant in comparison_variants(scheme, len(frozen.layers)):
        predicted = predict_memory(frozen.infos, frozen.classifier.in_features, frozen.classifier.out_features,
                                   variant.scheme, len(y), momentum=momentum, plain_autograd=variant.plain_autograd)
        measured, peak = measure_step(frozen, variant, x, y, lr=lr, momentum=momentum)
        rows[variant.label] = {
            "reordered": variant.reorder, "pytorch_autograd": variant.plain_autograd,
            "predicted_bytes": predicted.total(variant.reorder),
            "measured_bytes": measured.total(variant.reorder),
            "measured_saved_bytes": measured.saved_bytes, "measured_grad_bytes": measured.grad_bytes,
            "measured_optimizer_bytes": measured.optimizer_bytes,
            # What a user's step really needs at its worst moment (plus optimizer state, which
            # lives across steps): activations still saved, gradients held, temporaries.
            "peak_bytes": peak.peak_bytes + measured.optimizer_bytes,
            "peak_grad_bytes": peak.grad_bytes_at_peak, "peak_other_bytes": peak.other_bytes_at_peak,
        }
    return rows
