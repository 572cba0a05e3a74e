"""From a budget to a scheme: the memory function of a network, the smallest
budget any scheme needs, and the choice (contribution analysis + search, or a
fixed scheme)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from automl_server.engine.train.sparse_update.contribution import Contributions, analyse_contributions
from automl_server.engine.train.sparse_update.memory import MemoryFigures, predict_memory
from automl_server.engine.train.sparse_update.network import SparseNet
from automl_server.engine.train.sparse_update.scheme import SparseScheme
from automl_server.engine.train.sparse_update.search import (
    BudgetTooSmall,
    MemoryFn,
    evolutionary_search,
    fixed_scheme,
    minimum_scheme,
)
from automl_server.engine.train.sparse_update.training import FineTuneConfig


def figures_fn(net: SparseNet, batch_size: int, momentum: float) -> Callable[[SparseScheme], MemoryFigures]:
    classifier = net.classifier
    return lambda scheme: predict_memory(net.infos, classifier.in_features, classifier.out_features, scheme,
                                         batch_size, momentum=momentum)


def memory_fn(net: SparseNet, batch_size: int, momentum: float, reorder: bool) -> MemoryFn:
    """Bytes of one step of a scheme as this engine runs it (with or without reordering)."""
    figures = figures_fn(net, batch_size, momentum)
    return lambda scheme: figures(scheme).total(reorder)


def minimum_budget_kb(model: nn.Module, resolution: int, batch_size: int, *, momentum: float = 0.0,
                      reorder: bool = True) -> float:
    """The training memory (kB per step) the smallest scheme needs for this network:
    the job layer calls it at submission to refuse a budget below it."""
    net = SparseNet(model, resolution)
    return memory_fn(net, batch_size, momentum, reorder)(minimum_scheme()) / 1024


def choose_scheme(kind: str, net: SparseNet, x_train: torch.Tensor, y_train: torch.Tensor, x_eval: torch.Tensor,
                  y_eval: torch.Tensor, config: FineTuneConfig, budget_bytes: int, *, analysis_steps: int,
                  on_candidate: Callable[[int, int], None] | None = None) -> tuple[SparseScheme, Contributions | None]:
    """The scheme of ``kind`` under the budget; BudgetTooSmall when even the smallest
    scheme does not fit (``full`` is taken as asked, whatever the budget)."""
    n = len(net.layers)
    memory = memory_fn(net, config.batch_size, config.momentum, config.reorder)
    if kind != "full" and memory(minimum_scheme()) > budget_bytes:
        raise BudgetTooSmall(budget_bytes, memory(minimum_scheme()))
    if kind != "auto":
        return fixed_scheme(kind, n, memory, budget_bytes), None
    gains = analyse_contributions(net, x_train, y_train, x_eval, y_eval, config, steps=analysis_steps,
                                  fits=lambda scheme: memory(scheme) <= budget_bytes, on_candidate=on_candidate)
    return evolutionary_search(n, gains, memory, budget_bytes, seed=config.seed), gains
