"""The architecture-search strategies: one way in, as for training pipelines.

A strategy owns the architecture step of a ProxylessNAS search (the weight
steps on sampled single paths are the same for all). It registers once with

    register_strategy("gradient", GradientGates, title=..., description=...)

where the class is built from the running search (``ArchStrategyFactory``)
and has ``step() -> float`` plus ``state_dict()`` / ``load_state_dict()`` for
its own state in the search's checkpoint. The search config, the API's
``strategy`` field (and so the OpenAPI spec), the CLI and the web form read
the names from here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol

# Modules whose import registers the built-in strategies (loaded by name, as
# plugins are: the search module imports this registry, not the other way).
BUILTIN_STRATEGY_MODULES = ("automl_server.engine.search",)


class ArchStrategy(Protocol):
    def step(self) -> float:
        """One architecture update; returns its loss (or negative mean reward)."""

    def state_dict(self) -> dict[str, Any] | None:
        """The strategy's own state for the search's checkpoint (None: nothing to keep)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# Built from the running search (``engine.search.ProxylessSearch``): its supernet,
# optimisers, data streams and latency model.
ArchStrategyFactory = Callable[[Any], ArchStrategy]


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    build: ArchStrategyFactory
    title: str
    description: str


_STRATEGIES: dict[str, StrategyInfo] = {}


def register_strategy(name: str, build: ArchStrategyFactory, *, title: str = "", description: str = "") -> StrategyInfo:
    """Make a strategy known (re-registering a name replaces it)."""
    info = StrategyInfo(name, build, title or name, description)
    _STRATEGIES[name] = info
    return info


def unregister_strategy(name: str) -> None:
    _STRATEGIES.pop(name, None)


def strategies() -> dict[str, StrategyInfo]:
    """Every registered strategy by name, built-ins first."""
    for module in BUILTIN_STRATEGY_MODULES:
        importlib.import_module(module)
    return dict(_STRATEGIES)


def get_strategy(name: str) -> StrategyInfo:
    known = strategies()
    if name not in known:
        raise ValueError(f"strategy {name!r} is not known; accepted: {', '.join(known)}")
    return known[name]
