"""SGD on the trained tensors, either after the backward pass (ordinary) or with
operator reordering: each tensor updated as soon as its gradient is accumulated
and the gradient freed at once (``register_post_accumulate_grad_hook`` with one
optimizer per tensor, the PyTorch form of the Tiny Training Engine's
reordering), so at most one gradient buffer is alive at a time.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SparseUpdater:
    """Steps plain SGD (optionally with momentum) on ``params``; records the peak
    bytes of gradient buffers alive at once during the last step."""

    def __init__(self, params: list[nn.Parameter], *, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, reorder: bool = True) -> None:
        self.params = list(params)
        self.reorder = reorder
        # foreach=False: the per-tensor and the all-tensor optimizer then run the same
        # kernels, so both orders give the same weights bit for bit.
        options: dict[str, Any] = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "foreach": False}
        self.optimizers = ([torch.optim.SGD([p], **options) for p in self.params] if reorder
                           else [torch.optim.SGD(self.params, **options)])
        self.grad_peak_bytes = 0
        self._handles = []
        if reorder:
            for param, optimizer in zip(self.params, self.optimizers):
                self._handles.append(param.register_post_accumulate_grad_hook(self._updater(optimizer)))

    def _updater(self, optimizer: torch.optim.Optimizer) -> Any:
        def update(param: torch.Tensor) -> None:
            assert param.grad is not None
            self.grad_peak_bytes = max(self.grad_peak_bytes, param.grad.numel() * param.grad.element_size())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # free the gradient now, before the next layer's
        return update

    def set_lr(self, lr: float) -> None:
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr

    def step(self, loss: torch.Tensor) -> None:
        """Backward and update (during the backward pass when reordering)."""
        self.grad_peak_bytes = 0
        loss.backward()
        if not self.reorder:
            self.grad_peak_bytes = sum(p.grad.numel() * p.grad.element_size() for p in self.params
                                       if p.grad is not None)
            self.optimizers[0].step()
            self.optimizers[0].zero_grad(set_to_none=True)

    def state_bytes(self) -> int:
        """Bytes of optimizer state (momentum buffers)."""
        return sum(value.numel() * value.element_size() for value in self.state_tensors() if value.dim() > 0)

    def state_tensors(self) -> list[torch.Tensor]:
        """The optimizer state's tensors (they live across steps)."""
        return [value for optimizer in self.optimizers for state in optimizer.state.values()
                for value in state.values() if isinstance(value, torch.Tensor)]

    def state_dict(self) -> list[dict[str, Any]]:
        return [optimizer.state_dict() for optimizer in self.optimizers]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for optimizer, state in zip(self.optimizers, states):
            optimizer.load_state_dict(state)

    def close(self) -> None:
        """Remove the hooks (the parameters outlive this updater)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
