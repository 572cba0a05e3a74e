"""Every stage the dynamic program can ask the cost of, before any is measured.

Which stages the DP prices is fixed by the graph and the pruning (r, s), not
by their costs: ``schedule_part`` visits every reachable state and prices both
options of each of its endings whatever the values turn out to be. So the
candidates are collected by running the DP once with a cost function that
only records what it is asked (and answers 1 ms); a remote device can then
measure them all in one batch, and the DP runs again on the recorded costs
(``MemoisedStageCost`` over them) without measuring anything.
"""
from __future__ import annotations

from automl_server.engine.deploy.ios.graph import OpGraph
from automl_server.engine.deploy.ios.scheduler import IOSSettings, ios_schedule
from automl_server.engine.deploy.ios.stage import Stage


def candidate_stages(graph: OpGraph, settings: IOSSettings | None = None) -> dict[str, Stage]:
    """Stage key -> one stage with that key, for every stage ``ios_schedule`` prices
    under ``settings`` (stages of equal key cost the same; one is measured)."""
    found: dict[str, Stage] = {}

    def record(stage: Stage) -> float:
        found.setdefault(stage.key, stage)
        return 1.0

    ios_schedule(graph, record, settings)
    return found


class MissingStageCost(KeyError):
    """The DP asked for a stage no measurement covers (the candidates were not all measured)."""


class RecordedCost:
    """A cost function over recorded measurements only (stage key -> ms): it never measures."""

    def __init__(self, costs: dict[str, float]) -> None:
        self.costs = costs

    def __call__(self, stage: Stage) -> float:
        try:
            return self.costs[stage.key]
        except KeyError:
            raise MissingStageCost(f"no recorded cost for stage {stage.key}") from None
