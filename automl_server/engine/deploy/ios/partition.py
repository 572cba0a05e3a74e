"""Blocks and parts: the units the dynamic program runs on.

The reference receives blocks from its model definitions (one per Inception
module) and cuts a block into parts of at most ``max_part_size`` operators in
order. Here blocks are found in the graph: an operator that depends on every earlier
op and feeds every later one ends a block, which is how an Inception module's
concat closes the module. Parts are then cut as the
reference does, and once more wherever the number of DP states could exceed
``max_states`` (an addition for CPU time: a wide cell of many short branches
has up to prod(len + 1) states, which op counts alone do not bound).
"""
from __future__ import annotations

from math import prod

from automl_server.engine.deploy.ios.graph import OpGraph


def blocks(graph: OpGraph) -> list[list[int]]:
    """Consecutive runs of op indices, each closed by a cut op: one that every
    earlier op leads to and that leads to every later op (an Inception module's
    concat). No op can then share a stage with ops on the other side of the cut
    except the cut op itself, which the block keeps as its exit, as the
    reference's blocks do."""
    n = len(graph)
    ancestors = [0] * n
    for v in range(n):
        for u in graph.preds[v]:
            ancestors[v] |= ancestors[u] | (1 << u)
    descendants = [0] * n
    for v in reversed(range(n)):
        for w in graph.succs[v]:
            descendants[v] |= descendants[w] | (1 << w)
    everything = (1 << n) - 1
    out: list[list[int]] = []
    current: list[int] = []
    for v in range(n):
        current.append(v)
        if ancestors[v] | descendants[v] | (1 << v) == everything:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def chain_cover(graph: OpGraph, ops: list[int]) -> list[list[int]]:
    """Longest chains split off one after another (the reference's
    ``graph_chain_decomposition``): ops of one chain are ordered by dependence."""
    members = set(ops)
    reach: dict[int, set[int]] = {}
    for v in reversed(ops):  # descendants within ``ops``
        below: set[int] = set()
        for w in graph.succs[v]:
            if w in members:
                below |= {w} | reach[w]
        reach[v] = below
    remaining = list(ops)
    chains = []
    while remaining:
        alive = set(remaining)
        depth = {v: 1 for v in remaining}
        nxt: dict[int, int | None] = {v: None for v in remaining}
        for v in reversed(remaining):
            for w in reach[v] & alive:
                if depth[w] + 1 > depth[v]:
                    depth[v], nxt[v] = depth[w] + 1, w
        start: int | None = max(remaining, key=lambda v: depth[v])
        chain = []
        while start is not None:
            chain.append(start)
            start = nxt[start]
        chains.append(chain)
        taken = set(chain)
        remaining = [v for v in remaining if v not in taken]
    return chains


def state_bound(graph: OpGraph, ops: list[int]) -> int:
    """An upper bound on the DP's states for these ops: a state keeps a prefix of every chain."""
    return prod(len(chain) + 1 for chain in chain_cover(graph, ops))


def parts(graph: OpGraph, block: list[int], max_part_size: int, max_states: int) -> list[list[int]]:
    """``block`` cut in order into parts of at most ``max_part_size`` ops and about
    ``max_states`` states (halved until the bound holds or a part is one op)."""
    pieces = [block[i:i + max_part_size] for i in range(0, len(block), max_part_size)]
    out: list[list[int]] = []
    while pieces:
        piece = pieces.pop(0)
        if len(piece) > 1 and state_bound(graph, piece) > max_states:
            half = len(piece) // 2
            pieces[:0] = [piece[:half], piece[half:]]
            continue
        out.append(piece)
    return out
