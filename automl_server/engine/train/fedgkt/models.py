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

Server model (the ResNet-56/110 role), over H: a ResNet for CIFAR (He et al.
2016, as FedML's ``resnet56_server``) of three stages of basic residual blocks
(3x3 conv-BN-ReLU-3x3 conv-BN plus shortcut), ``depth`` blocks per stage and
widths ``width_mult`` x (1, 2, 4) times H's channels, the second and third
stage halving the map; then global average pooling and a linear classifier.
``depth`` n makes it a ResNet-(6n+2) over H (ResNet-8 is n = 1, ResNet-56
n = 9). Default n = 4, width 4x H: on the bundled images (H of 8 channels)
that is 32/64/128 channels, about 1.5M parameters, 50-70x the tiny space's
edge model and 10-15x its MACs, the paper's ratios (9-17x FLOPs, 54-105x
parameters), while one CPU trains it in milliseconds per sample. Deviation:
the paper's server is ResNet-56/110 at 16/32/64 channels on H at 32x32;
ours is shallower and wider (H is smaller and coarser here) so that it fits
a CPU job; ``bench/bench_fedgkt.py`` prints the ratios measured.
"""
from __future__ import annotations

import torch
from torch import nn

from search_spaces import Arch, SpaceLayout

SERVER_WIDTH_MULT = 4  # the server's first stage has 4x H's channels (then 8x, 16x)
SERVER_DEPTH_MULT = 4  # basic blocks per server stage: ResNet-26 over H (ResNet-56: 9)


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


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 conv-BN, ReLU between and after the sum with the shortcut
    (a 1x1 conv-BN when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch),
                                  nn.ReLU(inplace=True), nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(out_ch))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ServerModel(nn.Module):
    """ResNet-(6 * depth_mult + 2)-style network over H (see the module's docstring)."""

    def __init__(self, arch: Arch, cut: int,
                 width_mult: int = SERVER_WIDTH_MULT, depth_mult: int = SERVER_DEPTH_MULT) -> None:
        super().__init__()
        h_channels, _hw = feature_shape(arch, cut)
        in_ch = h_channels
        layers: list[nn.Module] = []
        for stage, stride in enumerate((1, 2, 2)):  # ResNet for CIFAR: 3 stages, the last two halve the map
            out_ch = h_channels * width_mult * 2 ** stage
            for position in range(depth_mult):
                layers.append(BasicBlock(in_ch, out_ch, stride if position == 0 else 1))
                in_ch = out_ch
        self.cells = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.classifier = nn.Linear(in_ch, arch.num_classes)

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
