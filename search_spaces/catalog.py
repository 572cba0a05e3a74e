"""The registered search spaces. A new space is one ``register_space(SearchSpace(...))`` call."""
from __future__ import annotations

from search_spaces.spaces import SearchSpace, register_space

# The paper's six candidates (MBConv3/MBConv6 x 3x3/5x5/7x7); Zero is added per cell by allow_zero.
PROXYLESS_CANDIDATES = ("mb3_k3", "mb3_k5", "mb3_k7", "mb6_k3", "mb6_k5", "mb6_k7")

# The paper searched mobile, CPU and GPU models in ONE space: the specialisation
# comes from each device's latency, not from the space. The three entries
# therefore share the paper's layout, width 1.0 and full candidate set; they
# exist so that a job names its target and so that a space can later be
# narrowed per target with a one-line change.
for _target, _device in (("mobile", "a mobile phone"), ("cpu", "a CPU"), ("gpu", "a GPU")):
    register_space(
        SearchSpace(
            name=f"proxyless-{_target}",
            description=f"ProxylessNAS space (Cai et al., ICLR 2019), specialised by the latency of {_device}",
            width_mult=1.0,
            candidates=PROXYLESS_CANDIDATES,
            allow_zero=True,
            stage_widths=(24, 40, 80, 96, 192, 320),
            stage_cells=(4, 4, 4, 4, 4, 1),
            stage_strides=(2, 2, 2, 1, 2, 1),
            first_conv_ch=32,
            first_block_ch=16,
            last_ch=1280,
        )
    )

# Microcontroller-class targets. Inspired by MCUNet-style budgets (a few hundred
# kB of SRAM, ~1 MB of flash): a shallower chain, narrow widths, no 7x7 kernels
# and a 256-channel final conv. Not a space from a paper.
register_space(
    SearchSpace(
        name="tiny",
        description="Small ProxylessNAS-style space for microcontroller-class targets (MCUNet-style budgets)",
        width_mult=0.35,
        candidates=("mb3_k3", "mb3_k5", "mb6_k3", "mb6_k5"),
        allow_zero=True,
        stage_widths=(16, 24, 40, 48, 96),
        stage_cells=(1, 2, 2, 2, 1),
        stage_strides=(2, 2, 2, 1, 2),
        first_conv_ch=16,
        first_block_ch=8,
        last_ch=256,
    )
)

# Multi-branch spaces, for an inter-operator scheduler (IOS, Ding et al., MLSys
# 2021) to have independent operators to run side by side. Each searchable
# position is a block of parallel branches that all read the block's input, as
# in an Inception module (Szegedy et al., CVPR 2015: 1x1/3x3/5x5 paths from one
# input), joined by addition as in a NASNet cell (Zoph et al., CVPR 2018) rather
# than by concatenation, so that every branch keeps the block's full width and
# the latency key of an ordinary MBConv cell. Each branch chooses its own
# operator with ProxylessNAS binary gates, so the kernel size per path that
# Inception fixes by hand is searched. Zero is offered on every branch of a
# block with an identity shortcut (branch 0 keeps the shortcut, so an all-Zero
# block is the identity, as a Zero chain cell is). Not a space from a paper.
register_space(
    SearchSpace(
        name="inception-mobile",
        description="Inception-like blocks of 3 parallel searched MBConv branches (summed), ProxylessNAS ops",
        width_mult=1.0,
        candidates=PROXYLESS_CANDIDATES,
        allow_zero=True,
        stage_widths=(24, 40, 80, 96, 192, 320),
        # Fewer positions than the chain (each is three branches): 12 blocks, 36 searched cells.
        stage_cells=(2, 2, 3, 2, 2, 1),
        stage_strides=(2, 2, 2, 1, 2, 1),
        first_conv_ch=32,
        first_block_ch=16,
        last_ch=1280,
        branches=3,
    )
)

# The small variant for microcontroller-class targets and tests: the widths of
# "tiny", 5 blocks of 3 branches (15 searched cells).
register_space(
    SearchSpace(
        name="tiny-branches",
        description="Small Inception-like space: blocks of 3 parallel searched MBConv branches (summed)",
        width_mult=0.35,
        candidates=("mb3_k3", "mb3_k5", "mb6_k3", "mb6_k5"),
        allow_zero=True,
        stage_widths=(16, 24, 40, 96),
        stage_cells=(1, 2, 1, 1),
        stage_strides=(2, 2, 2, 2),
        first_conv_ch=16,
        first_block_ch=8,
        last_ch=256,
        branches=3,
    )
)
