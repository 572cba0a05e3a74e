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
