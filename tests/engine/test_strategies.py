"""Search strategies come from a registry: a new one registered in one place
is accepted by the search config and drives the architecture steps."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from automl_server.engine import FlopsLatencyModel
from automl_server.engine.data import split_arrays
from automl_server.engine.search import ProxylessSearch, SearchConfig
from automl_server.engine.strategies import register_strategy, strategies, unregister_strategy
from search_spaces import get_space


class CountingStrategy:
    """Leaves the architecture alone and counts its steps."""

    def __init__(self, search: Any) -> None:
        self.steps = 0

    def step(self) -> float:
        self.steps += 1
        return 0.0

    def state_dict(self) -> dict[str, Any] | None:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]


@pytest.fixture
def counting() -> Iterator[None]:
    register_strategy("counting", CountingStrategy, title="Counting", description="test")
    yield
    unregister_strategy("counting")


def tiny_search(strategy: str) -> ProxylessSearch:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 8, 8, 1), dtype=np.uint8)
    y = np.arange(64) % 2
    data = split_arrays(x, y, seed=0)
    layout = get_space("tiny").layout(8, 2, 1)
    config = SearchConfig(warmup_epochs=0, search_epochs=1, batch_size=16, arch_update_every=1, strategy=strategy)
    return ProxylessSearch(layout, data, FlopsLatencyModel(), config)


def test_the_built_in_strategies_are_registered():
    assert {"gradient", "rl"} <= set(strategies())


def test_a_registered_strategy_runs_the_architecture_steps_and_is_checkpointed(counting):
    search = tiny_search("counting")
    before = [m.alpha.detach().clone() for m in search.net.mixed_ops]
    search.run_epoch()

    assert search.strategy.steps > 0  # type: ignore[attr-defined]
    assert all((m.alpha == b).all() for m, b in zip(search.net.mixed_ops, before))
    resumed = tiny_search("counting")
    resumed.load_state_dict(search.state_dict())
    assert resumed.strategy.steps == search.strategy.steps  # type: ignore[attr-defined]


def test_an_unknown_strategy_is_refused_naming_those_accepted():
    with pytest.raises(ValueError, match="accepted: gradient, rl"):
        SearchConfig(strategy="annealing")
