"""Architecture specs (one block string per cell), the plain network they build, and sampling.

An Arch is the unit that crosses process boundaries: the search derives one,
jobs store it as JSON, trials sample them, and ``build_model`` turns one into
an ordinary ``nn.Module`` with no search machinery in its forward pass.
"""
from __future__ import annotations

import json
import random
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from search_spaces.ops import Cell, MBConv, Zero, build_op, conv_bn
from search_spaces.spaces import SpaceLayout, get_space

_REQUIRED_FIELDS = ("space", "resolution", "num_classes", "blocks")
_OPTIONAL_FIELDS = {"in_channels": 3}  # grayscale inputs set 1


@dataclass(frozen=True)
class Arch:
    """A complete architecture: the space, the input it is built for, and one block per cell.

    Constructing one validates it, so every Arch in the program is buildable.
    """

    space: str  # registered search space name
    resolution: int  # square input size in pixels
    num_classes: int
    in_channels: int  # 1 for grayscale, 3 for RGB
    blocks: tuple[str, ...]  # one block string per searchable cell, in forward order

    def __post_init__(self) -> None:
        if isinstance(self.blocks, str) or not isinstance(self.blocks, (list, tuple)):
            raise ValueError(f"blocks must be a list of block strings, got {self.blocks!r}")
        object.__setattr__(self, "blocks", tuple(self.blocks))
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.space, str):
            raise ValueError(f"space must be a string, got {self.space!r}")
        cells = self.layout().cells  # checks the space name and the integer fields
        if len(self.blocks) != len(cells):
            raise ValueError(
                f"space {self.space!r} at resolution {self.resolution} has {len(cells)} cells, "
                f"got {len(self.blocks)} blocks"
            )
        for cell, block in zip(cells, self.blocks):
            if block not in cell.candidates:
                raise ValueError(
                    f"cell {cell.index} (stage {cell.stage}, {cell.in_ch}->{cell.out_ch} ch, stride {cell.stride}): "
                    f"block {block!r} is not accepted; accepted blocks for this cell: {', '.join(cell.candidates)}"
                )

    def layout(self) -> SpaceLayout:
        """The space's layout for this arch's input and class count."""
        return get_space(self.space).layout(self.resolution, self.num_classes, self.in_channels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "blocks": list(self.blocks),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Arch:
        """Parse and validate a spec dict (in_channels defaults to 3); ValueError naming what is wrong."""
        if not isinstance(d, Mapping):
            raise ValueError(f"an arch spec must be an object, got {type(d).__name__}")
        accepted = (*_REQUIRED_FIELDS, *_OPTIONAL_FIELDS)
        missing = [key for key in _REQUIRED_FIELDS if key not in d]
        if missing:
            raise ValueError(f"arch spec is missing {', '.join(missing)}; fields: {', '.join(accepted)}")
        unknown = sorted(str(key) for key in d if key not in accepted)
        if unknown:
            raise ValueError(f"arch spec has unknown fields {', '.join(unknown)}; fields: {', '.join(accepted)}")
        blocks = d["blocks"]
        if not isinstance(blocks, (list, tuple)) or not all(isinstance(b, str) for b in blocks):
            raise ValueError(f"blocks must be a list of block strings, got {blocks!r}")
        return cls(
            space=d["space"],
            resolution=d["resolution"],
            num_classes=d["num_classes"],
            in_channels=d.get("in_channels", _OPTIONAL_FIELDS["in_channels"]),
            blocks=tuple(blocks),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> Arch:
        try:
            data = json.loads(s)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"arch spec is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def build_fixed_layers(layout: SpaceLayout) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(stem, head, classifier) for a layout, shared by the single net and the engine's supernet.

    stem = first_conv (3x3 conv + BN + ReLU6) then first_block (MBConv1 3x3);
    head = feature_mix (1x1 conv + BN + ReLU6), global average pool, flatten;
    classifier = Linear (the reference's dropout is 0, so there is none).
    """
    first_conv = layout.fixed_layer("first_conv")
    first_block = layout.fixed_layer("first_block")
    feature_mix = layout.fixed_layer("feature_mix")
    classifier = layout.fixed_layer("classifier")
    stem = nn.Sequential(
        OrderedDict(
            first_conv=conv_bn(first_conv.in_ch, first_conv.out_ch, first_conv.kernel, first_conv.stride),
            first_block=MBConv(first_block.in_ch, first_block.out_ch, first_block.kernel, 1, first_block.stride),
        )
    )
    head = nn.Sequential(
        OrderedDict(
            feature_mix=conv_bn(feature_mix.in_ch, feature_mix.out_ch, feature_mix.kernel, feature_mix.stride),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
        )
    )
    return stem, head, nn.Linear(classifier.in_ch, classifier.out_ch)


def run_blocks(
    cells: nn.ModuleList, blocks: Sequence[Sequence[int]], x: torch.Tensor, *, drop_zero: bool
) -> torch.Tensor:
    """x through the cells block by block: a one-cell block is a chain step; the
    branches of a larger block all read its input and their outputs are summed.

    ``drop_zero`` (the plain network) leaves a branch holding a ``Zero`` op out
    of the graph, so an exported network has no constant-zero operators: its
    contribution is nothing, or the input when the branch carries the block's
    shortcut. The supernet keeps it (its MixedOp needs the Zero path's gate).
    """
    for block in blocks:
        if len(block) == 1:
            cell = cells[block[0]]
            if drop_zero and isinstance(getattr(cell, "op", None), Zero) and getattr(cell, "residual", False):
                continue  # a skipped layer on the chain: its shortcut alone, the identity
            x = cell(x)
            continue
        outputs = []
        for index in block:
            cell = cells[index]
            if drop_zero and isinstance(getattr(cell, "op", None), Zero):
                if getattr(cell, "residual", False):
                    outputs.append(x)
                continue
            outputs.append(cell(x))
        if not outputs:
            raise ValueError(f"block of cells {tuple(block)} has only Zero branches and no shortcut")
        out = outputs[0]
        for branch_out in outputs[1:]:
            out = out + branch_out
        x = out
    return x


class SingleNet(nn.Module):
    """The plain network of one Arch: stem, one Cell per block string, head, classifier.

    ``cells`` holds one Cell per layout cell (branches included, in layout
    order); ``blocks`` (from the layout) says which of them run side by side.
    """

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        layout = arch.layout()
        self.arch = arch  # as built; arch_of() reads the modules instead
        self.stem, self.head, self.classifier = build_fixed_layers(layout)
        self.cells = nn.ModuleList(
            Cell(build_op(block, spec.in_ch, spec.out_ch, spec.stride), spec.residual)
            for block, spec in zip(arch.blocks, layout.cells)
        )
        self.blocks = layout.blocks()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = run_blocks(self.cells, self.blocks, self.stem(x), drop_zero=True)
        return self.classifier(self.head(x))

    def to_arch(self) -> Arch:
        """The Arch these modules implement, read back from them."""
        return arch_of(self)


def build_model(arch: Arch) -> SingleNet:
    """An ordinary nn.Module for this arch; its forward runs exactly one op per cell."""
    return SingleNet(arch)


def arch_of(model: nn.Module) -> Arch:
    """The Arch a built model implements, read from its modules.

    Blocks, input channels and classes come from the modules; the space name
    and resolution (which no module records) from ``model.arch``. Each cell's
    channels and stride are checked against the space's layout.
    """
    built = getattr(model, "arch", None)
    cells = getattr(model, "cells", None)
    if not isinstance(built, Arch) or not isinstance(cells, nn.ModuleList):
        raise ValueError(f"arch_of needs a model from build_model, got {type(model).__name__}")
    num_classes = _submodule(model, "classifier", nn.Linear).out_features
    in_channels = _submodule(model, "stem.first_conv.conv", nn.Conv2d).in_channels
    specs = get_space(built.space).layout(built.resolution, num_classes, in_channels).cells
    if len(cells) != len(specs):
        raise ValueError(f"model has {len(cells)} cells; space {built.space!r} has {len(specs)}")
    blocks = []
    for spec, cell in zip(specs, cells):
        op = getattr(cell, "op", cell)
        if not isinstance(op, (MBConv, Zero)):
            raise ValueError(
                f"cell {spec.index} holds {type(op).__name__}, not a single op; derive the arch from the supernet"
            )
        block = op.block_string
        found = (op.in_ch, op.out_ch, op.stride, cell.residual)
        expected = (spec.in_ch, spec.out_ch, spec.stride, spec.residual)
        if found != expected:
            raise ValueError(
                f"cell {spec.index}: module has (in_ch, out_ch, stride, residual) {found}, layout says {expected}"
            )
        blocks.append(block)
    return Arch(built.space, built.resolution, num_classes, in_channels, tuple(blocks))


_M = TypeVar("_M", bound=nn.Module)


def _submodule(model: nn.Module, path: str, kind: type[_M]) -> _M:
    """The module at ``path`` (dotted), which must be a ``kind``, as build_model makes it."""
    try:
        found = model.get_submodule(path)
    except AttributeError:
        found = None
    if not isinstance(found, kind):
        raise ValueError(f"arch_of needs a model from build_model; its {path} is not an {kind.__name__}")
    return found


def sample_archs(
    space: str, n: int, seed: int, resolution: int, num_classes: int = 10, in_channels: int = 3
) -> list[Arch]:
    """n archs with each cell's block drawn uniformly from its candidates; the same seed gives the same list.

    Draws are independent, so a list may repeat an arch.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    cells = get_space(space).layout(resolution, num_classes, in_channels).cells
    rng = random.Random(seed)  # private generator: deterministic and leaves the global one alone
    return [
        Arch(space, resolution, num_classes, in_channels, tuple(rng.choice(cell.candidates) for cell in cells))
        for _ in range(n)
    ]
