"""Deep Leakage from Gradients (Zhu, Liu, Han, NeurIPS 2019).

Start from a dummy input and a dummy label drawn from noise, compute the
gradient the dummy pair would produce, and minimise ||grad(dummy) -
grad(shared)||^2 over the dummy input and label with L-BFGS (300 iterations).
The label is optimised as logits of a soft label (softmax), the reference's
formulation. With ``known_labels`` (iDLG's fast path) only the input is
optimised and the target is the label the job trains with.

Activations. The paper swaps its LeNet's ReLU for Sigmoid, because the attack
differentiates the gradient again. Our searched networks use ReLU6: its second
derivative is zero almost everywhere but the gradient-matching objective still
depends on the input through which units are active and through the
activations that multiply every weight gradient, so the attack runs on the
real network. The job audits the network it trained (ReLU6, the honest
figure); ``with_sigmoid`` gives the paper's setting for the benchmark.

BatchNorm. A worker computes its gradient in train mode, BatchNorm normalising
with its batch's statistics; the audit attacks the job's own batches that way.
For one image in train mode, a channel whose map is 1x1 (the end of a network
on 8x8 digits) normalises to exactly zero and the gradient says nothing, so
attacks on single images run in eval mode (running statistics), as DLG
implementations on BatchNorm networks do; the shared gradient is computed in
the same mode.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from automl_server.engine.privacy.gradients import parameters_of, smoothed_targets, soft_cross_entropy
from automl_server.engine.privacy.optimise import DEFAULT_ITERATIONS, Trace, lbfgs_minimise


@dataclass
class Rebuild:
    """What an attack produced: inputs in the model's (normalised) space, the labels it
    settled on, and the objective's trace."""

    x: torch.Tensor
    labels: torch.Tensor
    trace: Trace


def gradient_distance(dummy: list[torch.Tensor], shared: list[torch.Tensor], scale: float = 1.0) -> torch.Tensor:
    """||grad(dummy) - grad(shared)||^2 over every parameter, divided by ``scale``."""
    return sum((((d - s) ** 2).sum() for d, s in zip(dummy, shared)), torch.zeros(())) / scale


def squared_norm(tensors: list[torch.Tensor]) -> float:
    return float(sum(float((t.double() ** 2).sum()) for t in tensors))


def dlg_attack(model: nn.Module, shared: list[torch.Tensor], input_shape: tuple[int, ...], num_classes: int, *,
               iterations: int = DEFAULT_ITERATIONS, known_labels: torch.Tensor | None = None,
               label_smoothing: float = 0.0, seed: int = 0, train_mode: bool = True,
               should_stop: Callable[[], bool] | None = None) -> Rebuild:
    """Rebuild the batch (``input_shape`` = (n, C, H, W)) whose gradient is ``shared``.

    ``model`` is used on a copy, in the mode ``shared`` was computed in; the caller's
    network is left as it was."""
    net = copy.deepcopy(model)
    net.train(train_mode)
    params = parameters_of(net)
    if len(params) != len(shared):
        raise ValueError(f"the shared gradient has {len(shared)} tensors; the network has {len(params)} parameters")
    generator = torch.Generator().manual_seed(seed)
    dummy_x = torch.randn(input_shape, generator=generator).requires_grad_(True)
    dummy_label = torch.randn((input_shape[0], num_classes), generator=generator).requires_grad_(True)
    variables = [dummy_x] if known_labels is not None else [dummy_x, dummy_label]
    fixed_target = (smoothed_targets(known_labels, num_classes, label_smoothing)
                    if known_labels is not None else None)

    # Deviation: the distance is divided by ||grad(shared)||^2 (the same minimiser).
    # PyTorch's L-BFGS stops once the objective's gradient is below 1e-7; a searched
    # network's gradients are small (1e-4 .. 1e-2 per entry), so the unscaled distance
    # (around 1e-10) would stop it at the first step.
    scale = max(squared_norm(shared), 1e-30)

    def objective() -> torch.Tensor:
        target = fixed_target if fixed_target is not None else torch.softmax(dummy_label, dim=-1)
        loss = soft_cross_entropy(net(dummy_x), target)
        dummy_gradient = torch.autograd.grad(loss, params, create_graph=True)
        return gradient_distance(list(dummy_gradient), shared, scale)

    trace = lbfgs_minimise(variables, objective, iterations, should_stop)
    labels = known_labels if known_labels is not None else dummy_label.detach().argmax(dim=-1)
    return Rebuild(dummy_x.detach(), labels, trace)


def with_sigmoid(model: nn.Module) -> nn.Module:
    """A copy with every ReLU/ReLU6 replaced by Sigmoid: the paper's twice-differentiable setting."""
    net = copy.deepcopy(model)
    for name, module in list(net.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (nn.ReLU, nn.ReLU6)):
                setattr(module, child_name, nn.Sigmoid())
    return net
