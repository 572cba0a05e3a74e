"""A conv layer (BatchNorm folded in, optional ReLU6) whose backward keeps only
what the sparse update needs.

PyTorch's own conv saves its whole input and its ReLU6 saves a float copy of
the pre-activation whenever anything behind them needs a gradient, even when
the layer itself is frozen; masking gradients afterwards (the reference's
PyTorch path) saves no memory. ``SparseConvFunction`` saves, per layer:

- frozen, gradient only passing through: the ReLU6 mask (1 bit per element,
  packed 8 to a byte as in the paper) and nothing else (the input gradient needs only the weight, a parameter);
- bias only: the same (the bias gradient is the masked output gradient
  summed); never the input;
- weights of a ratio of channels: additionally only the kept input channels
  (``index_select`` makes a smaller copy; the full input is freed);
- full weight: the whole input.

Outside the backward region (no parameter here or earlier is trained) the
layer runs without recording anything at all.

Deviation from the paper: the Tiny Training Engine works on int8 graphs; here
tensors are fp32. The ReLU mask is 1 bit per element in both.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import grad as nn_grad

RELU6_MAX = 6.0
_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as bits, 8 to a uint8 (the last byte zero-padded)."""
    flat = mask.reshape(-1)
    padded = F.pad(flat.to(torch.uint8), (0, (-flat.numel()) % 8))
    return (padded.view(-1, 8) * _BIT_WEIGHTS).sum(1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The bool tensor of ``shape`` that ``pack_mask`` packed."""
    numel = 1
    for size in shape:
        numel *= size
    bits = (packed.unsqueeze(1) & _BIT_WEIGHTS).ne(0)
    return bits.reshape(-1)[:numel].reshape(shape)


class SparseConvFunction(torch.autograd.Function):
    """y = relu6?(conv(x, weight) + bias), with ``weight_part`` the trainable
    copy of ``weight[:, keep]`` (or of ``weight[keep]`` for a depthwise conv)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                weight_part: torch.Tensor | None, keep: torch.Tensor | None, stride: int, padding: int,
                groups: int, act: bool) -> torch.Tensor:
        need_x, need_w, need_b, need_part = ctx.needs_input_grad[:4]
        pre = F.conv2d(x, weight, bias, stride, padding, 1, groups)
        mask = None
        if act:
            # hardtanh's gradient is 1 strictly inside (0, 6), as in PyTorch's hardtanh_backward.
            if need_x or need_w or need_b or need_part:
                mask = pack_mask((pre > 0) & (pre < RELU6_MAX))
            out = pre.clamp_(0.0, RELU6_MAX)
        else:
            out = pre
        saved_x = x if need_w else None
        saved_part = x.index_select(1, keep) if (need_part and keep is not None) else None
        ctx.save_for_backward(mask, weight if need_x else None, saved_x, saved_part, keep)
        ctx.conf = (tuple(x.shape), tuple(weight.shape), stride, padding, groups)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        mask, weight, saved_x, saved_part, keep = ctx.saved_tensors
        x_shape, w_shape, stride, padding, groups = ctx.conf
        need_x, need_w, need_b, need_part = ctx.needs_input_grad[:4]
        grad = grad_out * unpack_mask(mask, tuple(grad_out.shape)) if mask is not None else grad_out
        grad_x = grad_w = grad_b = grad_part = None
        if need_x:
            grad_x = nn_grad.conv2d_input(list(x_shape), weight, grad, stride, padding, 1, groups)
        if need_w:
            grad_w = nn_grad.conv2d_weight(saved_x, list(w_shape), grad, stride, padding, 1, groups)
        if need_b:
            grad_b = grad.sum((0, 2, 3))
        if need_part:
            n_keep = saved_part.shape[1]
            if groups == 1:
                # dW[:, c] depends on input channel c only: the kept channels suffice.
                part_shape = [w_shape[0], n_keep, w_shape[2], w_shape[3]]
                grad_part = nn_grad.conv2d_weight(saved_part, part_shape, grad, stride, padding, 1, 1)
            else:  # depthwise: channel c's filter sees input channel c and output channel c
                part_shape = [n_keep, 1, w_shape[2], w_shape[3]]
                grad_part = nn_grad.conv2d_weight(saved_part, part_shape, grad.index_select(1, keep),
                                                        stride, padding, 1, n_keep)
        return grad_x, grad_w, grad_b, grad_part, None, None, None, None, None


def running_stats(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A BatchNorm's (running_mean, running_var); ValueError when it tracks none."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn} has no running statistics (track_running_stats=False); "
                         "the sparse update folds them into the conv")
    return bn.running_mean, bn.running_var


def is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1


class SparseConv(nn.Module):
    """Conv + folded BatchNorm (+ ReLU6) with a per-layer update: frozen, bias,
    or weights of a ratio of input channels (output channels when depthwise,
    as the reference's ``keep_mask``). ``plain_autograd`` runs the same layer
    with PyTorch's own ops: the full-update baseline the paper compares with."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: bool) -> None:
        super().__init__()
        if conv.groups != 1 and not is_depthwise(conv):
            raise ValueError(f"SparseConv supports plain and depthwise convs, got groups={conv.groups}")
        running_mean, running_var = running_stats(bn)
        with torch.no_grad():
            # The reference fine-tunes BN-free (folded) graphs: fold the running statistics once.
            scale = bn.weight / torch.sqrt(running_var + bn.eps)
            weight = conv.weight * scale.view(-1, 1, 1, 1)
            bias = bn.bias - running_mean * scale
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        # Registered (as None until a scheme sets them) so they travel in the state dict.
        self.weight_part: nn.Parameter | None
        self.keep: torch.Tensor | None
        self.register_parameter("weight_part", None)
        self.register_buffer("keep", None)
        self.stride = int(conv.stride[0])
        self.padding = int(conv.padding[0])
        self.groups = conv.groups
        self.act = act
        self.plain_autograd = False

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1] * self.groups)

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def depthwise(self) -> bool:
        return self.groups > 1

    def channel_norms(self) -> torch.Tensor:
        """Per updatable channel: L2 norm of its weights (the reference's 'magnitude+' criterion)."""
        w = self.weight.detach()
        if self.depthwise:
            return w.reshape(w.shape[0], -1).norm(dim=1)
        return w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)

    def set_update(self, bias: bool, weight_ratio: float) -> None:
        """Apply this layer's part of a scheme (resets any previous partial copy)."""
        self.sync_weight()
        self.weight_part, self.keep = None, None
        self.bias.requires_grad_(bias)
        self.weight.requires_grad_(weight_ratio >= 1.0)
        if 0.0 < weight_ratio < 1.0:
            n_channels = self.out_channels if self.depthwise else self.in_channels
            n_keep = max(int(n_channels * weight_ratio), 1)
            keep = torch.argsort(-self.channel_norms())[:n_keep].sort().values
            self.keep = keep
            dim = 0 if self.depthwise else 1
            self.weight_part = nn.Parameter(self.weight.detach().index_select(dim, keep).clone())

    @property
    def channels_updated(self) -> int:
        if self.weight.requires_grad:
            return self.out_channels if self.depthwise else self.in_channels
        return 0 if self.keep is None else int(self.keep.numel())

    @torch.no_grad()
    def sync_weight(self) -> None:
        """Copy the trained channels into the full weight (the forward reads the full weight)."""
        if self.weight_part is not None and self.keep is not None:
            self.weight.index_copy_(0 if self.depthwise else 1, self.keep, self.weight_part.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sync_weight()
        trains_here = self.weight.requires_grad or self.bias.requires_grad or self.weight_part is not None
        if self.plain_autograd:
            pre = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
            return F.relu6(pre) if self.act else pre
        if not torch.is_grad_enabled() or not (x.requires_grad or trains_here):
            # Outside the backward region: record nothing.
            with torch.no_grad():
                pre = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
                return pre.clamp_(0.0, RELU6_MAX) if self.act else pre
        out: torch.Tensor = SparseConvFunction.apply(x, self.weight, self.bias, self.weight_part, self.keep,
                                                     self.stride, self.padding, self.groups, self.act)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}->{self.out_channels}, k={self.weight.shape[-1]}, stride={self.stride}, "
                f"groups={self.groups}, act={self.act}")
