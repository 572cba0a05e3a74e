"""Endings of an operator set: every one, each once, checked against the definition."""
from __future__ import annotations

import itertools
import random

from automl_server.engine.deploy.ios import OpGraph, groups_of, iter_endings

DIAMOND = OpGraph.from_edges("abcd", [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])


def names(graph: OpGraph, mask: int) -> frozenset[str]:
    return frozenset(op.name for i, op in enumerate(graph.ops) if mask >> i & 1)


def brute_force_endings(graph: OpGraph, state: set[str]) -> set[frozenset[str]]:
    """Every non-empty subset with no edge from it to the rest of ``state``."""
    edges = {(graph.ops[u].name, graph.ops[v].name) for v in range(len(graph)) for u in graph.preds[v]}
    found = set()
    for size in range(1, len(state) + 1):
        for subset in itertools.combinations(sorted(state), size):
            chosen = set(subset)
            if not any(u in chosen and v in state - chosen for u, v in edges):
                found.add(frozenset(chosen))
    return found


def random_dag(rng: random.Random, n: int, p: float) -> OpGraph:
    labels = [f"o{i}" for i in range(n)]
    edges = [(labels[u], labels[v]) for v in range(n) for u in range(v) if rng.random() < p]
    return OpGraph.from_edges(labels, edges)


def test_the_diamond_has_the_ending_the_reference_misses():
    endings = [names(DIAMOND, m) for m in iter_endings(DIAMOND, 0b1111)]

    # {b, c, d}: b and c both end the set through d; the reference only builds
    # endings from one node's descendants per chain with disjoint descendants.
    assert sorted(map(sorted, endings)) == [["a", "b", "c", "d"], ["b", "c", "d"], ["b", "d"], ["c", "d"], ["d"]]


def test_every_ending_of_random_graphs_is_enumerated_exactly_once():
    rng = random.Random(0)
    for _ in range(30):
        graph = random_dag(rng, rng.randint(1, 8), rng.choice([0.15, 0.3, 0.6]))
        full = (1 << len(graph)) - 1
        # Also states that are only part of the graph (a downset: what is left to schedule).
        for state in {full, *(full >> k for k in range(1, len(graph)))}:
            got = [names(graph, m) for m in iter_endings(graph, state)]
            expected = brute_force_endings(graph, set(names(graph, state)))

            assert len(got) == len(set(got))
            assert set(got) == expected


def test_a_size_bound_keeps_exactly_the_small_endings():
    rng = random.Random(1)
    graph = random_dag(rng, 8, 0.25)
    full = (1 << len(graph)) - 1

    got = {names(graph, m) for m in iter_endings(graph, full, max_ops=3)}

    assert got == {e for e in brute_force_endings(graph, set(names(graph, full))) if len(e) <= 3}


def test_groups_are_the_connected_parts_of_a_stage():
    graph = OpGraph.from_edges("abcdef", [("a", "b"), ("c", "d"), ("c", "e")])

    groups = groups_of(graph, 0b111111)

    assert sorted([graph.ops[v].name for v in g] for g in groups) == [["a", "b"], ["c", "d", "e"], ["f"]]
