"""FedGKT's two networks: the edge model cut from the searched network, and the server model.

Edge model (He et al.'s ResNet-8 role). The searched network (``build_model``:
``stem``, ``cells``, ``head``, ``classifier``) is cut after stage ``cut``:

- extractor = stem + every cell of stages 0..cut: it computes the feature map H
  the client sends to the server;
- client classifier = the remaining cells + head (1x1 conv, pool) + linear:
  the client's own prediction z_c from H.

The two halves share the searched network's modules and weights, and the
edge model's forward is exactly the searched network's forward, so what the
job exports is the architecture it searched.

Default cut: the first stage whose output map is at most a quarter of the
input resolution (as deep as the reference's client stem + first blocks goes
in compute, while H stays small). Inputs too small to reach a quarter (8x8
digits stop at 4x4) cut after the first stage that reaches the network's
smallest map. Deviation: the reference cuts ResNet-8 right after its stem
conv (H at full resolution); we keep the searched network's first stages on
the edge, so H is smaller and cheaper to send.

Server model (the ResNet-56/110 role), over H: for every stage of the space
after the cut, ``SERVER_DEPTH_MULT`` times as many cells, ``SERVER_WIDTH_MULT``
times as wide, each cell the space's largest candidate (highest expansion,
largest kernel) with the same stride rule as the searched network; then the
space's head (1x1 conv to ``last_ch``, pool) and a linear classifier. When the
cut leaves no stage, the last stage's width and depth are used. The
multipliers were chosen so that, on the bundled digits with the tiny space,
extractor + server model cost about what ResNet-56 costs next to ResNet-8
(the paper's 9-17x FLOPs, 54-105x parameters); ``bench/bench_fedgkt.py``
prints the ratios measured.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from search_spaces import Arch, Cell, SpaceLayout, build_op, get_space, parse_block
from search_spaces.ops import conv_bn, conv_out_hw
from search_spaces.spaces import MIN_DOWNSAMPLE_HW

SERVER_WIDTH_MULT = 3  # channels of each server stage vs the searched network's
SERVER_DEPTH_MULT = 6  # cells of each server stage vs the searched network's (ResNet-8 -> 56 is 7x the layers)


class EdgeModel(nn.Module):
    """The searched network as extractor + client classifier; ``forward`` gives logits only (exportable)."""

    def __init__(self, extractor: nn.Module, client_classifier: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor
        self.client_classifier = client_classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.client_classifier(self.extractor(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(H, z_c): the feature map sent to the server and the client's own logits."""
        features = self.extractor(x)
        return features, self.client_classifier(features)


def stage_count(layout: SpaceLayout) -> int:
    return max(cell.stage for cell in layout.cells) + 1


def default_cut(layout: SpaceLayout) -> int:
    """The first stage whose output is at most a quarter of the input resolution
    (or, failing that, the first stage that reaches the network's smallest map)."""
    last_hw = {cell.stage: cell.output_hw for cell in layout.cells}
    for stage in sorted(last_hw):
        if last_hw[stage] * 4 <= layout.resolution:
            return stage
    smallest = min(last_hw.values())
    return min(stage for stage, hw in last_hw.items() if hw == smallest)


def check_cut(layout: SpaceLayout, cut: int) -> None:
    stages = stage_count(layout)
    if not 0 <= cut < stages:
        raise ValueError(f"cut {cut} is not a stage of space {layout.space!r}; accepted: 0..{stages - 1}")


def split_edge_model(model: nn.Module, arch: Arch, cut: int) -> EdgeModel:
    """The edge model of a network built by ``build_model(arch)``, sharing its modules and weights."""
    layout = arch.layout()
    check_cut(layout, cut)
    if any(len(block) > 1 for block in layout.blocks()):
        # The client classifier is the rest of the chain after the cut; parallel branches
        # (multi-branch spaces) would need the blocks kept together, which is not built yet.
        raise ValueError(f"FedGKT cuts chain networks only; space {arch.space!r} has parallel branches: "
                         "search a chain space (tiny, proxyless-*) for the fedgkt pipeline")
    n_extractor_cells = sum(1 for cell in layout.cells if cell.stage <= cut)
    cells = model.get_submodule("cells")
    if not isinstance(cells, nn.ModuleList):
        raise ValueError(f"split_edge_model needs a network from build_model; its cells are a {type(cells).__name__}")
    stem, head, classifier = (model.get_submodule(name) for name in ("stem", "head", "classifier"))
    extractor = nn.Sequential(stem, *cells[:n_extractor_cells])
    client_classifier = nn.Sequential(*cells[n_extractor_cells:], head, classifier)
    return EdgeModel(extractor, client_classifier)


def feature_shape(arch: Arch, cut: int) -> tuple[int, int]:
    """(channels, height = width) of H."""
    layout = arch.layout()
    check_cut(layout, cut)
    last = [cell for cell in layout.cells if cell.stage <= cut][-1]
    return last.out_ch, last.output_hw


def largest_block(arch: Arch) -> str:
    """The space's most expensive candidate: highest expansion, then largest kernel."""
    choices = [parse_block(block) for block in get_space(arch.space).candidates]
    best = max(choices, key=lambda choice: (choice.expand, choice.kernel))
    return best.name


class ServerModel(nn.Module):
    """A deep, wide stack of the space's largest cell over H, then head and classifier."""

    def __init__(self, arch: Arch, cut: int,
                 width_mult: int = SERVER_WIDTH_MULT, depth_mult: int = SERVER_DEPTH_MULT) -> None:
        super().__init__()
        space = get_space(arch.space)
        layout = arch.layout()
        in_ch, hw = feature_shape(arch, cut)
        block = largest_block(arch)
        stages = [(width, cells, stride) for stage, (width, cells, stride) in
                  enumerate(zip(space.stage_widths, space.stage_cells, space.stage_strides)) if stage > cut]
        if not stages:  # the cut kept every stage on the edge: continue at the last stage's shape
            stages = [(space.stage_widths[-1], space.stage_cells[-1], 1)]
        layers: list[nn.Module] = []
        for width, n_cells, stride in stages:
            out_ch = space.channels(width * width_mult)
            for position in range(n_cells * depth_mult):
                step = 2 if position == 0 and stride == 2 and hw >= MIN_DOWNSAMPLE_HW else 1
                layers.append(Cell(build_op(block, in_ch, out_ch, step), step == 1 and in_ch == out_ch))
                in_ch, hw = out_ch, conv_out_hw(hw, step)
        last_ch = layout.fixed_layer("feature_mix").out_ch
        self.cells = nn.Sequential(*layers)
        self.head = nn.Sequential(OrderedDict(feature_mix=conv_bn(in_ch, last_ch, 1, 1),
                                              pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1)))
        self.classifier = nn.Linear(last_ch, arch.num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.cells(features)))


class ExtractorAndServer(nn.Module):
    """Extractor + server model as one network: the server-size model that the
    paper's FedAvg baseline trains on the edge."""

    def __init__(self, extractor: nn.Module, server: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor
        self.server = server

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.server(self.extractor(x))
