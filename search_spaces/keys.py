"""Which latency-table keys a layout or an architecture needs.

One place for what the supernet's expected latency, the search driver, the
profiler and the predictor all enumerate: fixed layers plus the blocks that
run (a Zero block costs 0 ms and has no key).
"""
from __future__ import annotations

from search_spaces.arch import Arch
from search_spaces.ops import ZERO
from search_spaces.spaces import SpaceLayout, op_key


def space_keys(layout: SpaceLayout) -> list[str]:
    """Every key a search over ``layout`` can ask for, each once, in layer order."""
    keys = [op_key(layout, layer) for layer in layout.fixed]
    for cell in layout.cells:
        keys += [op_key(layout, cell, block) for block in cell.candidates if block != ZERO]
    return list(dict.fromkeys(keys))


def arch_keys(arch: Arch) -> list[str]:
    """The keys of one network, one per op that runs (repeats kept: each op costs)."""
    layout = arch.layout()
    keys = [op_key(layout, layer) for layer in layout.fixed]
    return keys + [op_key(layout, cell, block) for cell, block in zip(layout.cells, arch.blocks) if block != ZERO]
