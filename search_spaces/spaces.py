"""Search space definitions, their layout at a given input size, and the registry.

A SearchSpace is a frozen description (stage widths, cells, strides, candidate
blocks); ``layout()`` turns it into the concrete per-cell shapes for one input
resolution, class count and channel count. Latency keys (``op_key``) are
derived from that layout, so a LUT, the supernet and the final model all see
the same shapes.

A space may have parallel branches (``branches > 1``): each searchable
position is then a block of that many cells that all read the block's input
and whose outputs are summed. Every branch is an ordinary cell (its own
candidates, MixedOp and latency key), so the search, the keys and the
profiler treat it exactly as a chain cell; ``SpaceLayout.blocks`` says which
consecutive cells are the branches of one block.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from search_spaces.ops import ZERO, conv_out_hw, parse_block

# Downsampling stops once the feature map is this small, so that 8x8, 28x28 and
# 32x32 inputs keep a usable map instead of shrinking to 1x1 (interface rule).
MIN_DOWNSAMPLE_HW = 8
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """MobileNet's channel rounding: nearest multiple of divisor, never below 90% of value."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def check_positive_int(name: str, value: object) -> int:
    """value if it is an int >= 1 (bool refused); ValueError naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class CellSpec:
    """One searchable cell at a concrete input size."""

    index: int  # position among the searchable cells, 0-based
    stage: int  # stage the cell belongs to, 0-based
    in_ch: int
    out_ch: int
    stride: int  # effective stride after the resolution rule (1 or 2)
    input_hw: int  # spatial size of the cell's (square) input
    output_hw: int
    candidates: tuple[str, ...]  # block strings; "zero" only where the cell (or its block) is residual
    branch: int = 0  # position among the parallel branches of its block (0 in a chain space)
    branches: int = 1  # parallel branches of its block; 1 = a chain cell

    @property
    def block_residual(self) -> bool:
        """Whether the cell's block keeps an identity shortcut (stride 1 and in == out)."""
        return self.stride == 1 and self.in_ch == self.out_ch

    @property
    def residual(self) -> bool:
        """Whether the cell adds its input to the op's output (stride 1 and in == out).

        In a block of parallel branches only branch 0 carries the block's
        shortcut: sum_b op_b(x) + x == (op_0(x) + x) + sum_{b>0} op_b(x), so
        the add is priced inside branch 0's key (idskip:1), as for a chain cell,
        and a Zero branch 0 still passes the input on.
        """
        return self.block_residual and self.branch == 0


@dataclass(frozen=True)
class FixedLayer:
    """A layer that is not searched: stem conv, first MBConv1 block, final 1x1 conv, classifier."""

    name: str  # "first_conv" | "first_block" | "feature_mix" | "classifier"
    in_ch: int
    out_ch: int  # for the classifier: the number of classes
    stride: int
    input_hw: int  # for the classifier: the map it pools (the reference "Logits" covers pool + FC)
    output_hw: int  # 1 for the classifier
    kernel: int  # 1 for the classifier (a Linear layer)


@dataclass(frozen=True)
class SpaceLayout:
    """A space made concrete for one resolution, class count and input channel count."""

    space: str
    resolution: int
    num_classes: int
    in_channels: int
    fixed: tuple[FixedLayer, ...]  # forward order; the cells go between first_block and feature_mix
    cells: tuple[CellSpec, ...]

    def blocks(self) -> tuple[tuple[int, ...], ...]:
        """Cell indices per block, in forward order: one cell in a chain space,
        the parallel branches (all reading the block's input, outputs summed) otherwise."""
        return tuple(
            tuple(range(cell.index, cell.index + cell.branches)) for cell in self.cells if cell.branch == 0
        )

    def fixed_layer(self, name: str) -> FixedLayer:
        """The fixed layer with this name; ValueError listing the names otherwise."""
        for layer in self.fixed:
            if layer.name == name:
                return layer
        raise ValueError(f"no fixed layer {name!r}; layers: {', '.join(f.name for f in self.fixed)}")


@dataclass(frozen=True)
class SearchSpace:
    """A ProxylessNAS-style chain of stages of searchable cells."""

    name: str  # registry key, used in arch specs
    description: str  # one line for listings
    width_mult: float  # scales every width below via make_divisible(width * width_mult, 8)
    candidates: tuple[str, ...]  # block strings every cell may choose from ("zero" is added by allow_zero)
    allow_zero: bool  # add "zero" to the cells where stride == 1 and in == out
    stage_widths: tuple[int, ...]  # output channels of each stage before width_mult
    stage_cells: tuple[int, ...]  # searchable cells per stage
    stage_strides: tuple[int, ...]  # stride of each stage's first cell (the rest have stride 1)
    first_conv_ch: int = 32  # stem 3x3 conv, stride 2
    first_block_ch: int = 16  # fixed MBConv1 3x3 block after the stem
    last_ch: int = 1280  # final 1x1 conv; scaled only when width_mult > 1 (reference code, MobileNetV2)
    branches: int = 1  # parallel branches per searchable position (summed); 1 = the ProxylessNAS chain

    def __post_init__(self) -> None:
        # Lists are accepted for convenience and frozen, so spaces stay hashable and comparable.
        for name in ("candidates", "stage_widths", "stage_cells", "stage_strides"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        where = f"search space {self.name!r}"
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"search space name must match {_NAME_RE.pattern}, got {self.name!r}")
        if not (isinstance(self.width_mult, (int, float)) and self.width_mult > 0):
            raise ValueError(f"{where}: width_mult must be > 0, got {self.width_mult!r}")
        if not self.candidates:
            raise ValueError(f"{where}: candidates must not be empty")
        for block in self.candidates:
            if parse_block(block).kind == ZERO:
                raise ValueError(f"{where}: list 'zero' via allow_zero=True, not in candidates {self.candidates}")
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"{where}: candidates repeat a block: {self.candidates}")
        n_stages = len(self.stage_widths)
        if n_stages == 0 or len(self.stage_cells) != n_stages or len(self.stage_strides) != n_stages:
            raise ValueError(
                f"{where}: stage_widths, stage_cells and stage_strides need one entry per stage, got "
                f"{len(self.stage_widths)}, {len(self.stage_cells)} and {len(self.stage_strides)}"
            )
        for label, values in (("stage_widths", self.stage_widths), ("stage_cells", self.stage_cells)):
            for value in values:
                check_positive_int(f"{where}: each of {label}", value)
        for stride in self.stage_strides:
            if stride not in (1, 2):
                raise ValueError(f"{where}: stage strides must be 1 or 2, got {stride!r}")
        for label in ("first_conv_ch", "first_block_ch", "last_ch", "branches"):
            check_positive_int(f"{where}: {label}", getattr(self, label))

    def channels(self, width: int) -> int:
        """A nominal width scaled by width_mult and rounded as MobileNet does."""
        return make_divisible(width * self.width_mult, 8)

    @property
    def num_cells(self) -> int:
        return sum(self.stage_cells) * self.branches

    def layout(self, resolution: int, num_classes: int, in_channels: int = 3) -> SpaceLayout:
        """Per-layer channels and spatial sizes for this input.

        Downsampling layers (the stem, then each stride-2 stage in order) keep
        stride 2 only while the current map is >= 8 px, so 224 -> 112, 56, 28,
        14, 7; 32 -> 16, 8, 4; 28 -> 14, 7; 8 -> 4.
        """
        check_positive_int("resolution", resolution)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)

        def effective_stride(stride: int, hw: int) -> int:
            return 2 if stride == 2 and hw >= MIN_DOWNSAMPLE_HW else 1

        hw = resolution
        stem_ch = self.channels(self.first_conv_ch)
        stride = effective_stride(2, hw)
        first_conv = FixedLayer("first_conv", in_channels, stem_ch, stride, hw, conv_out_hw(hw, stride), 3)
        hw = first_conv.output_hw
        in_ch = self.channels(self.first_block_ch)
        first_block = FixedLayer("first_block", stem_ch, in_ch, 1, hw, hw, 3)

        cells: list[CellSpec] = []
        for stage, (width, n_cells, stage_stride) in enumerate(
            zip(self.stage_widths, self.stage_cells, self.stage_strides)
        ):
            out_ch = self.channels(width)
            for position in range(n_cells):
                stride = effective_stride(stage_stride, hw) if position == 0 else 1
                residual = stride == 1 and in_ch == out_ch
                # The paper offers Zero only where the identity shortcut exists, so a
                # skipped cell becomes the identity rather than erasing the features.
                candidates = self.candidates + ((ZERO,) if residual and self.allow_zero else ())
                out_hw = conv_out_hw(hw, stride)
                for branch in range(self.branches):
                    cells.append(
                        CellSpec(len(cells), stage, in_ch, out_ch, stride, hw, out_hw, candidates,
                                 branch=branch, branches=self.branches)
                    )
                in_ch, hw = out_ch, out_hw

        # The reference keeps 1280 for width_mult <= 1: shrinking the last conv costs accuracy for little latency.
        last_ch = make_divisible(self.last_ch * self.width_mult, 8) if self.width_mult > 1.0 else self.last_ch
        feature_mix = FixedLayer("feature_mix", in_ch, last_ch, 1, hw, hw, 1)
        classifier = FixedLayer("classifier", last_ch, num_classes, 1, hw, 1, 1)
        return SpaceLayout(
            space=self.name,
            resolution=resolution,
            num_classes=num_classes,
            in_channels=in_channels,
            fixed=(first_conv, first_block, feature_mix, classifier),
            cells=tuple(cells),
        )


_REGISTRY: dict[str, SearchSpace] = {}


def register_space(space: SearchSpace) -> SearchSpace:
    """Make a space available by name; re-registering the identical space is a no-op."""
    if not isinstance(space, SearchSpace):
        raise ValueError(f"register_space takes a SearchSpace, got {type(space).__name__}")
    existing = _REGISTRY.get(space.name)
    if existing is not None and existing != space:
        raise ValueError(f"search space {space.name!r} is already registered with a different definition")
    _REGISTRY[space.name] = space
    return space


def get_space(name: str) -> SearchSpace:
    """The registered space; ValueError listing the registered names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown search space {name!r}; registered: {', '.join(_REGISTRY)}") from None


def list_spaces() -> list[SearchSpace]:
    """Registered spaces in registration order."""
    return list(_REGISTRY.values())


def _shape(hw: int, ch: int) -> str:
    return f"{hw}x{hw}x{ch}"


def op_key(layout: SpaceLayout, item: CellSpec | FixedLayer, block: str | None = None) -> str:
    """The latency-LUT key of a layer, in the reference ProxylessNAS mobile LUT format.

    Cells need the block (one of the cell's candidates, not "zero": a skipped
    block costs 0 ms and has no entry). Fixed layers take no block.
    """
    if isinstance(item, CellSpec):
        if block is None:
            raise ValueError(f"cell {item.index} needs a block; accepted: {', '.join(item.candidates)}")
        if block not in item.candidates:
            raise ValueError(
                f"cell {item.index}: block {block!r} is not a candidate; accepted: {', '.join(item.candidates)}"
            )
        choice = parse_block(block)
        if choice.kind == ZERO:
            raise ValueError(f"cell {item.index}: 'zero' has no latency key (it costs 0 ms)")
        return (
            f"expanded_conv-input:{_shape(item.input_hw, item.in_ch)}-output:{_shape(item.output_hw, item.out_ch)}"
            f"-expand:{choice.expand}-kernel:{choice.kernel}-stride:{item.stride}-idskip:{int(item.residual)}"
        )
    if not isinstance(item, FixedLayer):
        raise ValueError(f"op_key takes a CellSpec or a FixedLayer, got {type(item).__name__}")
    if block is not None:
        raise ValueError(f"fixed layer {item.name!r} takes no block, got {block!r}")
    shapes = f"input:{_shape(item.input_hw, item.in_ch)}-output:{_shape(item.output_hw, item.out_ch)}"
    if item.name == "first_conv":
        return f"Conv-{shapes}"
    if item.name == "first_block":
        # The fixed MBConv1 block has no shortcut in the reference (idskip 0).
        return f"expanded_conv-{shapes}-expand:1-kernel:{item.kernel}-stride:{item.stride}-idskip:0"
    if item.name == "feature_mix":
        return f"Conv_1-{shapes}"
    if item.name == "classifier":
        return f"Logits-input:{_shape(item.input_hw, item.in_ch)}-output:{layout.num_classes}"
    raise ValueError(
        f"unknown fixed layer {item.name!r}; known: first_conv, first_block, feature_mix, classifier"
    )

