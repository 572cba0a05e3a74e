"""The IOS dynamic program, and the sequential and greedy schedules it is compared with.

cost[S] = min over endings S' of S satisfying the pruning of
          cost[S - S'] + stage_latency(S'),
with stage_latency(S') the better of concurrent execution of its groups and,
when its operators can be merged, operator merge (Ding et al. 2021, Alg. 1).
It runs per part of each block (``partition.py``); the schedule is the parts'
stages in order. Every single-op stage is an ending of size 1, so the
sequential schedule is always among the candidates and the DP's estimate is
never above it.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from automl_server.engine.deploy.ios.endings import groups_of, is_mergeable, iter_endings, within_pruning
from automl_server.engine.deploy.ios.graph import OpGraph, indices_of, mask_of
from automl_server.engine.deploy.ios.partition import blocks, parts
from automl_server.engine.deploy.ios.stage import MERGE, PARALLEL, Stage, make_stage

StageCost = Callable[[Stage], float]
STRATEGIES = ("parallel+merge", "parallel", "merge")


@dataclass(frozen=True)
class IOSSettings:
    max_group_size: int = 3  # r: operators per group (paper's default)
    max_num_groups: int = 8  # s: groups per stage (paper's default)
    max_part_size: int = 100  # operators per part (reference's default)
    max_states: int = 20000  # DP states per part, a bound for CPU time (see partition.py)
    strategy: str = "parallel+merge"  # as the reference's opt_type: which stage kinds are allowed

    def __post_init__(self) -> None:
        for name in ("max_group_size", "max_num_groups", "max_part_size", "max_states"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")


@dataclass(frozen=True)
class Schedule:
    stages: tuple[Stage, ...]
    estimated_ms: float  # sum of the stages' costs as the cost function gave them
    method: str  # "ios", "greedy" or "sequential"


def _best_stage(graph: OpGraph, ending: int, cost: StageCost, settings: IOSSettings) -> tuple[float, Stage] | None:
    """GenerateStage of the paper: the cheaper of concurrent execution and merge."""
    options: list[tuple[float, Stage]] = []
    groups = groups_of(graph, ending)
    single = len(groups) == 1 and len(groups[0]) == 1
    if (settings.strategy != "merge" or single) and within_pruning(groups, settings.max_group_size,
                                                                   settings.max_num_groups):
        stage = make_stage(graph, PARALLEL, groups)
        options.append((cost(stage), stage))
    # A merge holds at most s convolutions, as a stage holds at most s groups.
    if (settings.strategy != "parallel" and len(groups) <= settings.max_num_groups
            and is_mergeable(graph, ending)):
        stage = make_stage(graph, MERGE, [[v] for v in indices_of(ending)])
        options.append((cost(stage), stage))
    return min(options, key=lambda option: option[0]) if options else None


def schedule_part(graph: OpGraph, part: list[int], cost: StageCost, settings: IOSSettings) -> tuple[float, list[Stage]]:
    """The optimal stages of one part (ops of earlier parts count as done)."""
    best: dict[int, float] = {0: 0.0}
    choice: dict[int, tuple[int, Stage]] = {}
    limit = settings.max_group_size * settings.max_num_groups

    def solve(state: int) -> float:
        if state in best:
            return best[state]
        value, picked = float("inf"), None
        for ending in iter_endings(graph, state, max_ops=limit):
            option = _best_stage(graph, ending, cost, settings)
            if option is None:
                continue
            total = solve(state & ~ending) + option[0]
            if total < value:
                value, picked = total, (ending, option[1])
        if picked is None:  # unreachable: every single sink is an ending within any pruning
            raise RuntimeError("no ending of a non-empty set passed the pruning")
        best[state], choice[state] = value, picked
        return value

    full = mask_of(part)
    # The recursion is at most one level per op of the part.
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 4 * len(part) + 200))
    try:
        total = solve(full)
    finally:
        sys.setrecursionlimit(old_limit)
    stages: list[Stage] = []
    state = full
    while state:
        ending, stage = choice[state]
        stages.append(stage)
        state &= ~ending
    return total, stages[::-1]


def ios_schedule(graph: OpGraph, cost: StageCost, settings: IOSSettings | None = None) -> Schedule:
    """The IOS schedule of ``graph`` under ``cost`` (usually a MemoisedStageCost)."""
    settings = settings or IOSSettings()
    stages: list[Stage] = []
    total = 0.0
    for block in blocks(graph):
        for part in parts(graph, block, settings.max_part_size, settings.max_states):
            part_ms, part_stages = schedule_part(graph, part, cost, settings)
            total += part_ms
            stages.extend(part_stages)
    return Schedule(tuple(stages), total, "ios")


def sequential_schedule(graph: OpGraph, cost: StageCost | None = None) -> Schedule:
    """One operator per stage in topological order: what a plain runtime does."""
    stages = tuple(make_stage(graph, PARALLEL, [[v]]) for v in range(len(graph)))
    return Schedule(stages, sum(cost(s) for s in stages) if cost else float("nan"), "sequential")


def greedy_schedule(graph: OpGraph, cost: StageCost | None = None) -> Schedule:
    """The paper's greedy baseline: each stage runs every operator whose inputs
    are ready, each operator in its own group (no pruning, no merge)."""
    done = 0
    stages = []
    while done != mask_of(range(len(graph))):
        ready = [v for v in range(len(graph)) if not done >> v & 1 and mask_of(graph.preds[v]) & ~done == 0]
        stages.append(make_stage(graph, PARALLEL, [[v] for v in ready]))
        done |= mask_of(ready)
    return Schedule(tuple(stages), sum(cost(s) for s in stages) if cost else float("nan"), "greedy")
