"""The operator graph IOS schedules: operators, their edges, and what each one is.

An operator (``Op``) is what the schedule places in a stage: one compute node of
the network together with the cheap element-wise nodes that only it feeds
(convolution + its activation, as the reference's ``Conv`` carries its ``act``).
The graph is kept independent of where it came from (ONNX here,
``onnx_graph.py``; hand-made graphs in tests) so the dynamic program, the
endings and the stage keys only see indices, edges and signatures.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ConvSpec:
    """What decides whether convolutions can be merged into one wider one
    (the reference's ``check_merge``): same input tensor, stride, dilation,
    activation, and kernels that stay centred when zero-padded to the largest."""

    input: str  # the tensor the convolution reads
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int]  # symmetric padding (top = bottom, left = right)
    out_channels: int
    activation: str  # signature of the fused activation node, "" when none

    def merge_class(self) -> tuple[object, ...]:
        """Convs with equal classes merge exactly: zero-padding a k-kernel to K
        (K - k even) keeps its centre when the padding grows by (K - k) / 2, which
        holds for every kernel of the class when (k - 1) / 2 - pad is shared."""
        centre = tuple((k - 1) // 2 - p for k, p in zip(self.kernel, self.pads))
        odd = all(k % 2 == 1 for k in self.kernel)
        return (self.input, self.stride, self.dilation, self.activation, centre, odd)


@dataclass(frozen=True)
class Op:
    name: str  # unique id: the first output tensor of its first node
    nodes: tuple[str, ...]  # ids of the model nodes it runs, in order
    signature: str  # what it computes (types, attributes, shapes), without names: the stage keys' unit
    conv: ConvSpec | None = None  # set when the op is a plain convolution (+ activation) that may be merged


@dataclass(frozen=True)
class OpGraph:
    """Operators in a topological order with their edges (by index)."""

    ops: tuple[Op, ...]
    preds: tuple[frozenset[int], ...]
    succs: tuple[frozenset[int], ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.preds) != len(self.ops):
            raise ValueError(f"{len(self.ops)} ops but {len(self.preds)} predecessor sets")
        for v, ps in enumerate(self.preds):
            bad = [u for u in ps if not 0 <= u < v]
            if bad:
                raise ValueError(f"op {self.ops[v].name!r}: predecessors {bad} do not come before it in the order")
        succs: list[set[int]] = [set() for _ in self.ops]
        for v, ps in enumerate(self.preds):
            for u in ps:
                succs[u].add(v)
        object.__setattr__(self, "succs", tuple(frozenset(s) for s in succs))
        names = [op.name for op in self.ops]
        if len(set(names)) != len(names):
            raise ValueError("op names must be unique")

    def __len__(self) -> int:
        return len(self.ops)

    def index(self) -> dict[str, int]:
        return {op.name: i for i, op in enumerate(self.ops)}

    @classmethod
    def from_edges(cls, names: Sequence[str], edges: Iterable[tuple[str, str]],
                   signatures: dict[str, str] | None = None, convs: dict[str, ConvSpec] | None = None) -> OpGraph:
        """A hand-made graph (tests, examples): ``names`` in a topological order,
        ``edges`` as (producer, consumer) names."""
        position = {name: i for i, name in enumerate(names)}
        preds: list[set[int]] = [set() for _ in names]
        for u, v in edges:
            preds[position[v]].add(position[u])
        sig = signatures or {}
        conv = convs or {}
        ops = tuple(Op(n, (n,), sig.get(n, n), conv.get(n)) for n in names)
        return cls(ops, tuple(frozenset(p) for p in preds))


def mask_of(indices: Iterable[int]) -> int:
    mask = 0
    for i in indices:
        mask |= 1 << i
    return mask


def indices_of(mask: int) -> list[int]:
    """Set bits of ``mask`` in increasing order (= topological order of the graph)."""
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out
