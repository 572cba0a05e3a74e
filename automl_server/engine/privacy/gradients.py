"""What a data-parallel worker shares: the gradient of its loss on its batch.

The loss is the one the job trains with (cross-entropy, with the job's label
smoothing); the network runs in the mode the worker trains in (``train``:
BatchNorm normalises with the batch's own statistics). The model is a copy the
caller owns: a forward in train mode moves BatchNorm's running statistics, so
the job's trained network is never handed in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a distribution per sample (the DLG reference's criterion:
    mean over the batch of sum(-target * log_softmax))."""
    return torch.mean(torch.sum(-target * F.log_softmax(logits, dim=-1), dim=1))


def smoothed_targets(labels: torch.Tensor, num_classes: int, label_smoothing: float) -> torch.Tensor:
    """One-hot labels with PyTorch's label smoothing (1 - s on the class, + s / C everywhere)."""
    one_hot = F.one_hot(labels, num_classes).float()
    return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def parameters_of(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def shared_gradient(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    label_smoothing: float = 0.0, train_mode: bool = True) -> list[torch.Tensor]:
    """The gradient a worker computes on (x, labels): one tensor per parameter, detached.
    ``train_mode`` False: BatchNorm uses its running statistics (see dlg.py on batches of one)."""
    model.train(train_mode)
    loss = soft_cross_entropy(model(x), smoothed_targets(labels, num_classes, label_smoothing))
    return [g.detach().clone() for g in torch.autograd.grad(loss, parameters_of(model))]


def last_linear_weight_index(model: nn.Module) -> int:
    """Position, in ``parameters_of(model)``, of the weight of the last nn.Linear (the classifier)."""
    params = parameters_of(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the network has no nn.Linear classifier; iDLG reads the last linear layer's gradient")
    weight = linears[-1].weight
    for i, p in enumerate(params):
        if p is weight:
            return i
    raise ValueError("the last linear layer's weight does not take gradients")
