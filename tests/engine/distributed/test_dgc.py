"""Deep Gradient Compression: nothing is lost, little is sent, and only as indices and values."""
from __future__ import annotations

import torch

from automl_server.engine.train.distributed.dgc import Segments, densify, take_sparse
from automl_server.engine.train.distributed.settings import DelayedSGDSettings, density_for_epoch


def test_sent_plus_residual_equals_everything_accumulated():
    segments = Segments(starts=(0, 50), lengths=(50, 150))
    generator = torch.Generator().manual_seed(0)
    accumulated = torch.zeros(200)
    momentum = torch.zeros(200)
    added = torch.zeros(200)
    sent = torch.zeros(200)

    for _ in range(6):
        increment = torch.randn(200, generator=generator)
        accumulated += increment
        added += increment
        indices, values = take_sparse(accumulated, momentum, segments, density=0.04)
        sent += densify([indices], [values], 200)

    assert torch.allclose(sent + accumulated, added, atol=1e-5)


def test_top_k_per_tensor_is_sent_and_masked_in_the_momentum():
    segments = Segments(starts=(0, 4), lengths=(4, 6))
    accumulated = torch.tensor([0.1, -5.0, 0.2, 0.3, 1.0, 0.0, -9.0, 0.5, 0.4, 0.0])
    momentum = torch.ones(10)

    indices, values = take_sparse(accumulated, momentum, segments, density=0.2)  # k = 1 of 4, 2 of 6

    assert sorted(indices.tolist()) == [1, 4, 6]
    assert sorted(values.tolist()) == [-9.0, -5.0, 1.0]
    assert accumulated[[1, 4, 6]].abs().sum() == 0 and momentum[[1, 4, 6]].sum() == 0
    assert momentum.sum() == 7  # untouched elsewhere


def test_sparsity_warm_up_follows_the_paper_then_the_target():
    settings = DelayedSGDSettings(compression=0.001, sparsity_warmup_epochs=4)

    assert [density_for_epoch(settings, e) for e in range(6)] == [0.25, 0.063, 0.015, 0.004, 0.001, 0.001]
    assert density_for_epoch(DelayedSGDSettings(compression=None), 0) is None
