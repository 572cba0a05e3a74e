"""The ProxylessNAS over-parameterised network built from a search-space layout.

Fixed stem and head come from ``search_spaces.build_fixed_layers``; every cell
of the layout becomes ``Cell(MixedOp(...), residual)``, so the derived
architecture runs exactly the modules a ``search_spaces.build_model`` net has.
In a space with parallel branches each branch is such a cell with its own
MixedOp (its own alphas and gates), and the cells of one block read the same
input and are summed (``search_spaces.arch.run_blocks``).
"""
from __future__ import annotations

from typing import cast

import torch
from torch import nn

from search_spaces.arch import Arch, build_fixed_layers, run_blocks
from search_spaces.keys import space_keys
from search_spaces.ops import ZERO, Cell, MBConv, build_op
from search_spaces.spaces import SpaceLayout, op_key

from .latency import LatencyModel
from .mixed_op import MixedOp


class SuperNet(nn.Module):
    """stem -> one Cell(MixedOp) per cell spec -> head -> classifier."""

    def __init__(self, layout: SpaceLayout) -> None:
        super().__init__()
        self.layout = layout
        self.stem, self.head, self.classifier = build_fixed_layers(layout)
        cells = []
        for spec in layout.cells:
            ops = [build_op(block, spec.in_ch, spec.out_ch, spec.stride) for block in spec.candidates]
            cells.append(Cell(MixedOp(list(spec.candidates), ops), spec.residual))
        self.cells = nn.ModuleList(cells)
        self.blocks = layout.blocks()
        # Per latency model: (the model, kept so its id is not reused; fixed-layer ms; per-cell ms tensors).
        self._latency_cache: dict[int, tuple[LatencyModel, float, list[torch.Tensor]]] = {}

    def zero_residual_gamma(self) -> None:
        """Start every candidate of a residual cell as the identity: the last
        BatchNorm's scale (gamma) of each such op set to zero.

        Why: a supernet whose cells draw a random candidate every step learns
        very slowly when those candidates start as unrelated random functions,
        since each cell's input then changes with the draw before it. With zero
        gammas every residual cell starts as its shortcut, and the candidates
        grow from a common point. Measured on tiny, digits 8 px, 242 random-path
        steps at lr 0.025: 0.31 training accuracy without, 0.75 with (one fixed
        path: 1.00, and 0.97 on holdout; README, issue 17). The habit of OFA's networks
        (mit-han-lab/once-for-all, ``zero_last_gamma``; Goyal et al. 2017), not
        of the ProxylessNAS reference, which keeps gamma at 1.
        """
        for cell in self.cells:
            if not cell.residual:
                continue
            for op in cast(MixedOp, cell.op).ops:
                norms = [m for m in op.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
                if norms:  # Zero has none
                    nn.init.zeros_(norms[-1].weight)

    @torch.no_grad()
    def start_candidates_alike(self) -> None:
        """Start every candidate of a cell as the same function: the cell's smallest
        MBConv (fewest expanded channels, then smallest kernel) embedded in each
        larger one. Its kernel sits at the centre of the larger kernel (zeros
        around it), its expanded channels are the first ones (the rest keep
        their random init but their projection weights start at 0), and the
        projection's BatchNorm is copied. Every candidate then gives exactly the
        smallest one's output (training-mode BatchNorm included); they grow
        apart from there, each trained only when drawn.

        Why: in a cell without a shortcut (the first cell of each stage changes
        the width) the six candidates otherwise start as unrelated random maps
        to different feature bases, and the next cell, drawn independently,
        sees a different basis at every step. Measured on proxyless-mobile,
        digits 8 px, 11 epochs of random paths at lr 0.05 (187 steps): the
        derived path's holdout accuracy 0.22 without, 0.84 with (one fixed path
        trained alone: 0.98; with only the six stage-transition cells held on
        one candidate: 0.98, so those cells were the cause). On tiny: 0.81 ->
        0.92. The weights stay separate per candidate as in the reference; only
        their start is shared (the idea of the superkernels of Single-Path NAS,
        Stamoulis et al. 2019, and of OFA's nested kernels, used here at
        initialisation only). A candidate that does not contain the smallest
        one (fewer expanded channels or a smaller kernel, or an expansion of 1
        against more) keeps its own random start.
        """
        for cell in self.cells:
            blocks = [op for op in cast(MixedOp, cell.op).ops if isinstance(op, MBConv)]
            if len(blocks) < 2:
                continue
            smallest = min(blocks, key=lambda op: (op.expand, op.kernel))
            for op in blocks:
                if op is not smallest and _contains(op, smallest):
                    _embed(smallest, op)

    @property
    def mixed_ops(self) -> list[MixedOp]:
        return [cast(MixedOp, cell.op) for cell in self.cells]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = run_blocks(self.cells, self.blocks, self.stem(x), drop_zero=False)
        return self.classifier(self.head(x))

    # -- parameters --------------------------------------------------------

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture logits alpha, one tensor per cell."""
        return [op.alpha for op in self.mixed_ops]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the alphas (the gates are buffers, not parameters)."""
        arch_ids = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch_ids]

    # -- gates ---------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        for op in self.mixed_ops:
            op.mode = mode

    def sample(self, generator: torch.Generator | None = None) -> None:
        """Binarize every cell's gates (in cell order, so one generator gives one net)."""
        for op in self.mixed_ops:
            op.sample(generator)

    def set_alpha_grad(self) -> None:
        """Two-path step: map each cell's gate gradients onto its alpha.grad."""
        for op in self.mixed_ops:
            op.set_alpha_grad()

    def alphas_snapshot(self) -> list[torch.Tensor]:
        """Copies of the alphas, to pass to rescale_alpha after the optimizer step."""
        return [op.alpha.detach().clone() for op in self.mixed_ops]

    def rescale_alpha(self, alphas_before: list[torch.Tensor]) -> None:
        if len(alphas_before) != len(self.cells):
            raise ValueError(f"rescale_alpha needs {len(self.cells)} alpha copies, got {len(alphas_before)}")
        for op, before in zip(self.mixed_ops, alphas_before):
            op.rescale_alpha(before)

    def fix_chosen(self) -> None:
        """Run the argmax candidate of every cell ("fixed" mode), e.g. to validate derive()."""
        for op in self.mixed_ops:
            op.fix_chosen()

    def derive(self) -> Arch:
        """The architecture of the argmax candidate per cell."""
        layout = self.layout
        return Arch(
            space=layout.space,
            resolution=layout.resolution,
            num_classes=layout.num_classes,
            in_channels=layout.in_channels,
            blocks=tuple(op.chosen() for op in self.mixed_ops),
        )

    def arch_probs(self) -> list[dict[str, float]]:
        """Per cell, block string -> probability (for logs and the UI)."""
        return [
            dict(zip(op.candidates, op.probs().detach().cpu().tolist())) for op in self.mixed_ops
        ]

    # -- latency -------------------------------------------------------------

    def latency_keys(self) -> list[str]:
        """Every LUT key expected_latency_ms looks up (fixed layers, then non-Zero candidates),
        so that a driver can profile a table's missing keys before searching."""
        return space_keys(self.layout)

    def cell_latencies_ms(self, latency_model: LatencyModel) -> list[torch.Tensor]:
        """Per cell, the latency of each candidate (Zero = 0 ms); looked up once per model."""
        return self._latencies(latency_model)[1]

    def fixed_latency_ms(self, latency_model: LatencyModel) -> float:
        return self._latencies(latency_model)[0]

    def expected_latency_ms(self, latency_model: LatencyModel, *, sampled_pair: bool = False) -> torch.Tensor:
        """Fixed layers + sum over cells of sum_j p_j * lat_j; differentiable in the alphas.

        p = softmax(alpha) per cell; with ``sampled_pair`` (the two-path
        architecture step) p is each cell's renormalised sampled pair
        (``MixedOp.path_probs``), so the latency term moves only sampled alphas.

        Parallel branches are summed like chain cells: the latency of a block is
        taken as that of running its branches one after another (sequential
        execution; the adds that join them are not priced). An inter-operator
        scheduler (IOS) then makes the deployed network faster than this sum,
        so the expected latency is an upper estimate for branched spaces.
        """
        fixed_ms, per_cell = self._latencies(latency_model)
        expected = torch.stack([op.expected_latency(lat, sampled_pair=sampled_pair)
                                for op, lat in zip(self.mixed_ops, per_cell)]).sum()
        return expected + fixed_ms

    def _latencies(self, latency_model: LatencyModel) -> tuple[float, list[torch.Tensor]]:
        cached = self._latency_cache.get(id(latency_model))
        if cached is not None and cached[0] is latency_model:
            return cached[1], cached[2]
        layout = self.layout
        fixed_ms = sum(latency_model.latency_ms(op_key(layout, layer)) for layer in layout.fixed)
        per_cell = []
        for spec in layout.cells:
            # The Zero op costs nothing and has no key (the cell reduces to its residual).
            per_block = [
                0.0 if block == ZERO else latency_model.latency_ms(op_key(layout, spec, block))
                for block in spec.candidates
            ]
            per_cell.append(torch.tensor(per_block, dtype=torch.float64))
        self._latency_cache[id(latency_model)] = (latency_model, float(fixed_ms), per_cell)
        return float(fixed_ms), per_cell


def _contains(large: MBConv, small: MBConv) -> bool:
    """Whether ``small`` fits inside ``large`` (same ends, no fewer expanded channels, no smaller kernel)."""
    return ((large.in_ch, large.out_ch, large.stride) == (small.in_ch, small.out_ch, small.stride)
            and large.expand >= small.expand and large.kernel >= small.kernel
            and (large.inverted_bottleneck is None) == (small.inverted_bottleneck is None))


def _unit(layers: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """The conv and BatchNorm of one ``search_spaces.ops.conv_bn`` unit."""
    return cast(nn.Conv2d, layers.get_submodule("conv")), cast(nn.BatchNorm2d, layers.get_submodule("bn"))


def _copy_unit(source: nn.Module, target: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy the BatchNorm of the first ``channels`` channels; return both convs' weights."""
    (source_conv, source_norm), (target_conv, target_norm) = _unit(source), _unit(target)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(target_norm, name)[:channels].copy_(getattr(source_norm, name))
    return source_conv.weight, target_conv.weight


@torch.no_grad()
def _embed(small: MBConv, large: MBConv) -> None:
    """Set ``large``'s weights so that it computes exactly what ``small`` computes."""
    mid = small.in_ch * small.expand
    if small.inverted_bottleneck is not None and large.inverted_bottleneck is not None:
        source, target = _copy_unit(small.inverted_bottleneck, large.inverted_bottleneck, mid)
        target[:mid].copy_(source)
    source, target = _copy_unit(small.depth_conv, large.depth_conv, mid)
    pad = (large.kernel - small.kernel) // 2  # both kernels odd: the small one sits at the centre
    target[:mid].zero_()
    target[:mid, :, pad:pad + small.kernel, pad:pad + small.kernel].copy_(source)
    source, target = _copy_unit(small.point_linear, large.point_linear, large.out_ch)
    target.zero_()  # the extra expanded channels start unheard
    target[:, :mid].copy_(source)
