"""The DLG paper's attack network: a LeNet with Sigmoid activations (twice
differentiable), weights drawn uniformly from [-0.5, 0.5] as in the reference.
Used as the paper's setting in the benchmark and as the network on which the
attack is known to work, to test the attack itself; the job audits its own
searched network instead."""
from __future__ import annotations

import torch
from torch import nn


class LeNetSigmoid(nn.Module):
    def __init__(self, in_channels: int, resolution: int, num_classes: int, width: int = 12) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(width, width, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(width, width, 5, padding=2, stride=1), nn.Sigmoid(),
        )
        side = (resolution + 1) // 2
        side = (side + 1) // 2
        self.fc = nn.Linear(width * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


def lenet_sigmoid(in_channels: int, resolution: int, num_classes: int, seed: int = 0) -> LeNetSigmoid:
    """The reference's initialisation: every weight and bias uniform in [-0.5, 0.5]."""
    net = LeNetSigmoid(in_channels, resolution, num_classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.rand(p.shape, generator=generator) - 0.5)
    return net
