"""A stage of a schedule and its canonical key.

A stage is either concurrent execution (disjoint groups of operators; each
group runs its operators in order, the groups side by side) or an operator
merge (convolutions sharing one input computed as one wider convolution).

The key names what is measured, not where it sits in the network: operator
signatures (types, attributes, tensor shapes) and the edges inside each group,
never node names. Identical modules (Inception-v3's Mixed_6c and Mixed_6d) or
a second network with the same stage on the same device therefore reuse one
measurement. Deviation, noted: which groups read the same input tensor is not
part of the key; it changes memory traffic slightly, not the work done.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from automl_server.engine.deploy.ios.graph import Op, OpGraph

PARALLEL = "parallel"
MERGE = "merge"
# 2: the agent's ONNX Runtime program runs a group of operators as one session
# (device_agents/ios/ort_program.py); a cost timed one session per operator is stale.
KEY_VERSION = "ios-stage/2"


@dataclass(frozen=True)
class Stage:
    kind: str  # PARALLEL or MERGE
    groups: tuple[tuple[Op, ...], ...]  # for MERGE: one op per group, in channel order
    key: str  # canonical key (see module docstring)

    @property
    def ops(self) -> list[Op]:
        return [op for group in self.groups for op in group]

    def to_dict(self) -> dict[str, Any]:
        """The stage as the device executor and the schedule JSON read it."""
        return {
            "kind": self.kind,
            "groups": [[op.name for op in group] for group in self.groups],
            "ops": {op.name: list(op.nodes) for op in self.ops},
        }


def make_stage(graph: OpGraph, kind: str, groups: list[list[int]]) -> Stage:
    if kind not in (PARALLEL, MERGE):
        raise ValueError(f"stage kind must be {PARALLEL!r} or {MERGE!r}, got {kind!r}")
    if kind == MERGE and any(len(g) != 1 for g in groups):
        raise ValueError("a merge stage holds one operator per group")
    ordered = [sorted(g) for g in groups]
    described = []
    for group in ordered:
        local = {v: i for i, v in enumerate(group)}
        edges = sorted((local[u], local[v]) for v in group for u in graph.preds[v] if u in local)
        described.append(json.dumps([[graph.ops[v].signature for v in group], edges]))
    canonical = json.dumps([KEY_VERSION, kind, sorted(described)])
    key = f"{KEY_VERSION}:{kind}:{hashlib.sha1(canonical.encode()).hexdigest()}"
    return Stage(kind, tuple(tuple(graph.ops[v] for v in group) for group in ordered), key)
