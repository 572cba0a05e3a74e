"""Training memory of one step: predicted from the shapes, and measured.

Training memory here is what a step needs beyond the network's weights and
the batch: activations saved for backward, gradient buffers and optimizer
state (the reference's ``nelem_saved_for_backward`` counts the same three:
activation, weight/gradient and momentum). With operator reordering only one
gradient is alive at a time; without it every gradient is alive once the
backward pass ends.

Deviation from the paper: fp32 tensors (the paper: int8 activations and
weights, 32-bit biases), so the figures here are those of this PyTorch engine,
not of the int8 MCU runtime. ReLU masks are 1 bit per element in both.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

from automl_server.engine.train.sparse_update.scheme import ConvLayerInfo, SparseScheme

FLOAT_BYTES = 4


def mask_bytes(elements: int) -> int:
    """A ReLU6 mask packed 1 bit per element (``sparse_conv.pack_mask``)."""
    return (elements + 7) // 8

INDEX_BYTES = 8  # int64 labels


@dataclass(frozen=True)
class MemoryFigures:
    """Bytes of one training step."""

    saved_bytes: int  # activations saved for backward
    grad_bytes: int  # every gradient buffer (all alive at once without reordering)
    largest_grad_bytes: int  # the largest single gradient (all that is alive with reordering)
    optimizer_bytes: int  # optimizer state (momentum buffers)

    def total(self, reordered: bool) -> int:
        grads = self.largest_grad_bytes if reordered else self.grad_bytes
        return self.saved_bytes + grads + self.optimizer_bytes

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_bytes": self.total(False), "total_reordered_bytes": self.total(True)}


def predict_memory(layers: list[ConvLayerInfo], classifier_in: int, num_classes: int, scheme: SparseScheme,
                   batch_size: int, *, momentum: float = 0.0, plain_autograd: bool = False) -> MemoryFigures:
    """What a step of ``scheme`` keeps, from the shapes alone (the same accounting the
    measurement uses, so predicted and measured agree when the engine saves only what
    its gradients need). ``plain_autograd``: PyTorch's own conv/ReLU6 (the baseline)."""
    n = batch_size
    saved = 0
    grads: list[int] = []
    first = scheme.first_updated(len(layers))
    for info, update in zip(layers, scheme.updates(len(layers))):
        if first is None or info.index < first:
            continue  # outside the backward region: nothing recorded
        out_elems = n * info.out_ch * info.output_hw ** 2
        in_elems_per_channel = n * info.input_hw ** 2
        if plain_autograd:
            # F.conv2d saves its input; F.relu6 (hardtanh) its float input.
            saved += in_elems_per_channel * info.in_ch * FLOAT_BYTES + (out_elems * FLOAT_BYTES if info.act else 0)
        else:
            saved += mask_bytes(out_elems) if info.act else 0
            saved += in_elems_per_channel * info.kept_channels(update.weight_ratio) * FLOAT_BYTES
        if update.bias:
            grads.append(info.out_ch * FLOAT_BYTES)
        if update.weight_ratio > 0:
            grads.append(info.weight_numel(update.weight_ratio) * FLOAT_BYTES)
    # The classifier (always trained) saves its input; the loss saves its log-probabilities and labels.
    # (cross-entropy: log-softmax output, labels and a scalar weight total).
    saved += n * classifier_in * FLOAT_BYTES + n * num_classes * FLOAT_BYTES + n * INDEX_BYTES + FLOAT_BYTES
    grads += [classifier_in * num_classes * FLOAT_BYTES, num_classes * FLOAT_BYTES]
    optimizer = sum(grads) if momentum > 0 else 0  # one momentum buffer per trained tensor (part)
    return MemoryFigures(saved, sum(grads), max(grads), optimizer)


class SavedTensorCounter:
    """Counts the bytes autograd saves for backward, each storage once, leaving out
    the model's own parameters and buffers (they exist whether or not we train)."""

    def __init__(self, model: nn.Module) -> None:
        self._excluded = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
        self._seen: set[int] = set()
        self.bytes = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in self._excluded and pointer not in self._seen:
            self._seen.add(pointer)
            self.bytes += storage.nbytes()
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor


@contextmanager
def count_saved_tensors(model: nn.Module) -> Iterator[SavedTensorCounter]:
    counter = SavedTensorCounter(model)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        yield counter
