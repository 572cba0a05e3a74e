"""Endings of an operator set and the groups of a stage.

An ending of a set S is a non-empty S' within S with no edge from S' to
S - S': it can run last, after everything else of S. The reference code
(``ending_iterator`` in mit-han-lab/inter-operator-scheduler) enumerates only
endings built as the union of one node's descendants per chain, with disjoint
descendant sets; an ending such as {b, c, d} of the diamond a -> b, a -> c,
b -> d, c -> d is never produced there. Here every ending is enumerated, as
the paper's recursion is written (Ding et al. 2021, Algorithm 1).
"""
from __future__ import annotations

from collections.abc import Iterator

from automl_server.engine.deploy.ios.graph import OpGraph, indices_of, mask_of


def iter_endings(graph: OpGraph, state: int, max_ops: int | None = None) -> Iterator[int]:
    """Every ending of ``state`` (a bit mask of op indices), each exactly once.

    Ops are decided in reverse topological order: an op may join the ending only
    when all of its successors inside ``state`` already have, which is exactly
    the "no edge from S' to S - S'" condition. ``max_ops`` skips endings larger
    than the pruning could ever accept (r * s), a bound, not a filter on shape.
    """
    order = indices_of(state)[::-1]
    succ_masks = [mask_of(graph.succs[v]) & state for v in order]
    limit = len(order) if max_ops is None else max_ops
    # Explicit stack of (position in order, chosen mask, chosen count).
    stack: list[tuple[int, int, int]] = [(0, 0, 0)]
    while stack:
        pos, chosen, count = stack.pop()
        if pos == len(order):
            if chosen:
                yield chosen
            continue
        v = order[pos]
        stack.append((pos + 1, chosen, count))
        if count < limit and succ_masks[pos] & ~chosen == 0:
            stack.append((pos + 1, chosen | (1 << v), count + 1))


def is_ending(graph: OpGraph, state: int, ending: int) -> bool:
    """The definition, checked directly (for callers holding a candidate)."""
    if ending == 0 or ending & ~state:
        return False
    rest = state & ~ending
    return all(mask_of(graph.succs[v]) & rest == 0 for v in indices_of(ending))


def groups_of(graph: OpGraph, ending: int) -> list[list[int]]:
    """The weakly connected components of ``ending``: the stage's concurrent groups.

    Operators joined by an edge inside the stage must run one after the other,
    so each component becomes one group run sequentially (in topological order);
    different components share no edge and run side by side. Deviation from the
    reference, whose groups are single chains (one node's descendants): a
    component may be any small DAG, which is what enumerating every ending needs.
    """
    remaining = ending
    groups = []
    while remaining:
        seed = remaining & -remaining
        component, frontier = seed, seed
        while frontier:
            v = (frontier & -frontier).bit_length() - 1
            frontier &= frontier - 1
            neighbours = (mask_of(graph.succs[v]) | mask_of(graph.preds[v])) & ending & ~component
            component |= neighbours
            frontier |= neighbours
        groups.append(indices_of(component))
        remaining &= ~component
    return groups


def within_pruning(groups: list[list[int]], max_group_size: int, max_num_groups: int) -> bool:
    """The paper's pruning P(S, S'): at most s groups of at most r operators each."""
    return len(groups) <= max_num_groups and all(len(g) <= max_group_size for g in groups)


def is_mergeable(graph: OpGraph, ending: int) -> bool:
    """Two or more convolutions of one merge class (same input tensor, stride,
    dilation, activation, centred kernels), hence independent of each other."""
    members = indices_of(ending)
    if len(members) < 2:
        return False
    specs = [graph.ops[v].conv for v in members]
    if any(spec is None for spec in specs):
        return False
    return len({spec.merge_class() for spec in specs if spec is not None}) == 1
