"""Search spaces: candidate ops, registered spaces, architecture specs.

- ``ops``: block strings (``mb6_k5``, ``zero``), the MBConv and Zero ops, the Cell.
- ``spaces``: SearchSpace definitions, their per-resolution layout, the
  registry, and latency-LUT keys (``op_key``) in the reference ProxylessNAS format.
- ``arch``: the Arch spec (JSON), ``build_model`` for a plain network, and sampling.
- ``catalog``: the registered spaces ("proxyless-mobile", "proxyless-cpu",
  "proxyless-gpu", "tiny", and with parallel branches "inception-mobile",
  "tiny-branches").

Imports only torch and the standard library. The spec format is described in
ARCH_SCHEMA.md beside this file.
"""
from __future__ import annotations

from search_spaces import catalog as _catalog  # noqa: F401  (registers the built-in spaces)
from search_spaces.arch import Arch, arch_of, build_fixed_layers, build_model, sample_archs
from search_spaces.keys import arch_keys, space_keys
from search_spaces.ops import BlockChoice, Cell, MBConv, Zero, build_op, parse_block
from search_spaces.spaces import (
    CellSpec,
    FixedLayer,
    SearchSpace,
    SpaceLayout,
    get_space,
    list_spaces,
    op_key,
    register_space,
)

__all__ = [
    "BlockChoice",
    "parse_block",
    "MBConv",
    "Zero",
    "Cell",
    "build_op",
    "CellSpec",
    "FixedLayer",
    "SpaceLayout",
    "SearchSpace",
    "register_space",
    "get_space",
    "list_spaces",
    "op_key",
    "space_keys",
    "arch_keys",
    "Arch",
    "build_model",
    "arch_of",
    "sample_archs",
    "build_fixed_layers",
]
