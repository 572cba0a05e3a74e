"""Peak bytes of the tensors a training step allocates, measured while PyTorch
allocates and frees them: the paper's "peak memory" of a step (Lin et al.
2022, Fig. 9: activations, gradients and temporaries alive at the worst
moment), which the analytic sum of ``memory.MemoryFigures`` (everything saved
for backward + every gradient, as if all were alive at once) overstates:
autograd frees each saved activation as soon as its node's backward has run,
while the gradients pile up.

Every op the step runs (forward, backward, optimizer) passes through a
``TorchDispatchMode``; each new storage among its outputs is counted until
Python drops it (a weak reference's callback). Storages that existed before
the step (weights, the batch, optimizer state) are not counted: they exist
whether or not the step runs. At each new peak the bytes held by gradient
buffers are noted, to say what the peak is made of.

CPU tensors are counted at their size; the allocator's own rounding and
fragmentation are what the fresh-process peak RSS (``peak_rss.py``) shows.
"""
from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass(frozen=True)
class StepPeak:
    """Bytes alive at the worst moment of a step, and what they were."""

    peak_bytes: int
    # Gradient buffers held in ``.grad`` (waiting for the optimizer) among them. With
    # reordering a weight gradient is applied and dropped inside its own accumulation,
    # so it is never held: its bytes count as a temporary of the backward pass.
    grad_bytes_at_peak: int
    max_grad_bytes: int  # the most ``.grad`` bytes held at any moment of the step

    @property
    def other_bytes_at_peak(self) -> int:
        """Activations saved for backward, gradients flowing between layers, temporaries."""
        return self.peak_bytes - self.grad_bytes_at_peak

    def to_dict(self) -> dict[str, int]:
        return {"peak_bytes": self.peak_bytes, "grad_bytes_at_peak": self.grad_bytes_at_peak,
                "other_bytes_at_peak": self.other_bytes_at_peak, "max_grad_bytes": self.max_grad_bytes}


class PeakTensorMemory(TorchDispatchMode):
    """``with PeakTensorMemory(params, existing) as tracker: <one step>``; then ``tracker.result()``.
    ``params``: the trained tensors (whose ``.grad`` is a gradient buffer); ``existing``:
    tensors alive before the step that the step may write in place (not counted)."""

    def __init__(self, params: Iterable[torch.Tensor], existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self._params = list(params)
        # id(storage) -> (weak reference keeping the callback alive, bytes counted)
        self._tracked: dict[int, tuple[weakref.ref[Any], int]] = {}
        self._existing = {id(t.untyped_storage()) for t in (*self._params, *existing)}
        self._existing_refs = [t.untyped_storage() for t in (*self._params, *existing)]  # keep ids unique
        self.live_bytes = 0
        self._peak = StepPeak(0, 0, 0)
        self._max_grad = 0

    def _grad_bytes(self) -> int:
        total = 0
        for param in self._params:
            grad = param.grad
            if grad is not None and id(grad.untyped_storage()) in self._tracked:
                total += grad.untyped_storage().nbytes()
        return total

    def _freed(self, key: int, _ref: weakref.ref[Any]) -> None:
        entry = self._tracked.pop(key, None)
        if entry is not None:
            self.live_bytes -= entry[1]

    def _track(self, tensor: torch.Tensor) -> bool:
        """Count a storage the step has just created; False when it was known already."""
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._existing or key in self._tracked or storage.device.type == "meta":
            return False
        nbytes = storage.nbytes()
        self._tracked[key] = (weakref.ref(storage, functools.partial(self._freed, key)), nbytes)
        self.live_bytes += nbytes
        return True

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        allocated = [self._track(leaf) for leaf in tree_flatten(out)[0] if isinstance(leaf, torch.Tensor)]
        # After every op (the optimizer's in-place updates too): a gradient is assigned to
        # .grad after the op that computed it, so the previous op's gradient shows here.
        grads = self._grad_bytes()
        self._max_grad = max(self._max_grad, grads)
        if any(allocated) and self.live_bytes > self._peak.peak_bytes:
            self._peak = StepPeak(self.live_bytes, grads, self._max_grad)
        return out

    def result(self) -> StepPeak:
        """The peak, with the most gradient bytes seen held (checked after every op and at the end)."""
        self._max_grad = max(self._max_grad, self._grad_bytes())
        return StepPeak(self._peak.peak_bytes, self._peak.grad_bytes_at_peak, self._max_grad)
