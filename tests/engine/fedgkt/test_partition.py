"""Partitions: every sample once, the N/K cap, >= 10 samples each, the same seed the same split."""
from __future__ import annotations

import math

import numpy as np
import pytest

from automl_server.engine.train.fedgkt.partition import class_histograms, dirichlet_partition, iid_partition

LABELS = np.random.default_rng(3).integers(0, 10, size=600)


@pytest.mark.parametrize("clients,alpha,seed", [(4, 0.5, 0), (8, 0.1, 1), (16, 0.5, 2), (3, 5.0, 3)])
def test_dirichlet_partition_covers_every_sample_once_within_cap_and_floor(clients, alpha, seed):
    parts = dirichlet_partition(LABELS, clients, alpha, seed)

    joined = np.concatenate(parts)
    assert len(parts) == clients and sorted(joined.tolist()) == list(range(len(LABELS)))
    assert max(len(p) for p in parts) <= math.ceil(len(LABELS) / clients)
    assert min(len(p) for p in parts) >= 10


def test_partitions_are_reproducible_by_seed_and_differ_across_seeds():
    first, again, other = (dirichlet_partition(LABELS, 4, 0.5, s) for s in (7, 7, 8))

    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert all(np.array_equal(a, b) for a, b in zip(iid_partition(600, 4, 1), iid_partition(600, 4, 1)))


def test_dirichlet_is_skewed_by_label_and_iid_is_not():
    skewed = class_histograms(LABELS, dirichlet_partition(LABELS, 4, 0.1, 0), 10)
    even = class_histograms(LABELS, iid_partition(len(LABELS), 4, 0), 10)

    assert sum(map(sum, skewed)) == sum(map(sum, even)) == len(LABELS)
    assert max(max(h) / sum(h) for h in skewed) > 0.3  # some client is dominated by one class
    assert max(max(h) / sum(h) for h in even) < 0.25


def test_too_many_clients_for_the_floor_is_refused():
    with pytest.raises(ValueError, match="10 samples each"):
        dirichlet_partition(LABELS[:50], 6, 0.5, 0)
