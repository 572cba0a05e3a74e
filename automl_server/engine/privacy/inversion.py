"""Inverting what a FedGKT client sends: find x with extractor(x) close to H.

FedGKT's clients send, per training image, the feature map H of their
extractor (and their logits and the label; see fedgkt/payload.py). The server
never receives the extractor's weights, but the edge model is the network the
job exports and deploys, so an observer of the traffic may well hold it: the
audit assumes it does (white-box, the worst case). The optimisation is the
one DLG uses: dummy x from noise, L-BFGS on ||extractor(x) - H||^2, with the
extractor in eval mode as the client extracts (running BatchNorm statistics,
so every image is inverted on its own).

Deviation: L-BFGS with a strong-Wolfe line search. The reference's fixed step
of 1 (no line search) diverges on the searched ReLU6/BatchNorm extractor (the
objective grew from 0.6 to 158 in 15 iterations on digits); the line search
only ever accepts steps that decrease it.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from automl_server.engine.privacy.dlg import Rebuild
from automl_server.engine.privacy.optimise import DEFAULT_ITERATIONS, lbfgs_minimise


def invert_features(extractor: nn.Module, features: torch.Tensor, input_shape: tuple[int, ...], *,
                    iterations: int = DEFAULT_ITERATIONS, seed: int = 0,
                    should_stop: Callable[[], bool] | None = None) -> Rebuild:
    """Rebuild the images (``input_shape`` = (n, C, H, W)) whose features are ``features``."""
    was_training = extractor.training
    extractor.eval()
    flags = [(p, p.requires_grad) for p in extractor.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)  # only the dummy input is optimised
    try:
        generator = torch.Generator().manual_seed(seed)
        dummy_x = torch.randn(input_shape, generator=generator).requires_grad_(True)
        target = features.detach()
        # Divided by ||H||^2 (the same minimiser), for the reason given in dlg.py.
        scale = max(float((target.double() ** 2).sum()), 1e-30)

        def objective() -> torch.Tensor:
            return ((extractor(dummy_x) - target) ** 2).sum() / scale

        trace = lbfgs_minimise([dummy_x], objective, iterations, should_stop, line_search="strong_wolfe")
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        extractor.train(was_training)
    return Rebuild(dummy_x.detach(), torch.empty(0, dtype=torch.long), trace)
