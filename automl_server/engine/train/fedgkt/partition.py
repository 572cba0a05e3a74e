"""Seeded partitions of the training split over clients, and their class histograms.

- IID: a seeded permutation cut into near-equal parts.
- Non-IID (FedML ``partition_data(..., "hetero")``, used by FedGKT): for every
  class, proportions p ~ Dirichlet(alpha) over the clients; a client already
  holding N/K samples (K clients) gets proportion 0 for the classes that
  follow; the whole draw is repeated until every client holds at least
  ``min_samples`` (10) samples.

Deviation: the reference only stops giving a full client *further* classes,
so the class that fills it can push it past N/K. We also clip each client's
share of a class at what is left of its ceil(N/K) capacity and hand the
excess to the clients with room (largest proportion first), so no client is
ever above ceil(N/K).
"""
from __future__ import annotations

import math

import numpy as np

MIN_SAMPLES_PER_CLIENT = 10  # the reference's floor (``while min_size < 10``)
MAX_DRAWS = 1000


def iid_partition(n_samples: int, clients: int, seed: int) -> list[np.ndarray]:
    """Sample indices per client: a seeded shuffle in near-equal parts (sorted within each part)."""
    order = np.random.default_rng(seed).permutation(n_samples)
    return [np.sort(part) for part in np.array_split(order, clients)]


def dirichlet_partition(labels: np.ndarray, clients: int, alpha: float, seed: int,
                        min_samples: int = MIN_SAMPLES_PER_CLIENT) -> list[np.ndarray]:
    """Sample indices per client, non-IID by label as in the reference (with a strict cap, see above)."""
    labels = np.asarray(labels)
    n = len(labels)
    if clients * min_samples > n:
        raise ValueError(f"{n} samples cannot give {clients} clients {min_samples} samples each")
    cap = math.ceil(n / clients)
    rng = np.random.default_rng(seed)
    for _ in range(MAX_DRAWS):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            proportions = rng.dirichlet(np.full(clients, alpha))
            # The reference's balance rule: clients at N/K receive no further classes.
            proportions = proportions * np.array([len(part) < n / clients for part in parts])
            proportions = proportions / proportions.sum()
            counts = _capped_counts(proportions, len(members), [cap - len(part) for part in parts])
            for part, chunk in zip(parts, np.split(members, np.cumsum(counts)[:-1])):
                part.extend(chunk.tolist())
        if min(len(part) for part in parts) >= min_samples:
            return [np.sort(np.array(part, dtype=np.int64)) for part in parts]
    raise ValueError(f"no Dirichlet({alpha}) draw in {MAX_DRAWS} gave each of {clients} clients "
                     f"{min_samples} samples; use more data, fewer clients or a larger dirichlet_alpha")


def _capped_counts(proportions: np.ndarray, total: int, room: list[int]) -> np.ndarray:
    """Counts per client: the reference's cumulative-proportion cut, then clipped to each client's room."""
    bounds = (np.cumsum(proportions) * total).astype(int)[:-1]  # the reference's split points
    counts = np.diff(np.concatenate([[0], bounds, [total]]))
    counts = np.minimum(counts, np.maximum(room, 0))
    excess = total - int(counts.sum())
    for client in np.argsort(-proportions, kind="stable"):  # the excess goes where the draw wanted it most
        if excess == 0:
            break
        extra = min(excess, max(room[client] - int(counts[client]), 0))
        counts[client] += extra
        excess -= extra
    return counts


def class_histograms(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> list[list[int]]:
    """Per client, the number of its samples of each class."""
    labels = np.asarray(labels)
    return [np.bincount(labels[part], minlength=num_classes).astype(int).tolist() for part in parts]
