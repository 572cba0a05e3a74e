"""The IOS dynamic program finds the best schedule, found by exhaustive search on small graphs."""
from __future__ import annotations

import functools
import itertools
import random

import pytest

from automl_server.engine.deploy.ios import (
    ConvSpec,
    IOSSettings,
    MemoisedStageCost,
    OpGraph,
    Schedule,
    Stage,
    blocks,
    check_schedule,
    greedy_schedule,
    ios_schedule,
    schedule_from_json,
    schedule_part,
    schedule_to_json,
    sequential_schedule,
)

# A model of a device where concurrency pays: each stage costs a launch overhead
# plus its slowest group; a merge costs 0.7 of its convs' work.
OVERHEAD = 1.0


def synthetic_cost(weights: dict[str, float]):  # type: ignore[no-untyped-def]
    def cost(stage: Stage) -> float:
        if stage.kind == "merge":
            return OVERHEAD + 0.7 * sum(weights[op.name] for op in stage.ops)
        return OVERHEAD + max(sum(weights[op.name] for op in group) for group in stage.groups)

    return cost


def conv(input_name: str, kernel: int = 1) -> ConvSpec:
    return ConvSpec(input_name, (kernel, kernel), (1, 1), (1, 1), (kernel // 2, kernel // 2), 8, "Relu")


def exhaustive_best(graph: OpGraph, weights: dict[str, float], r: int, s: int) -> float:
    """Every schedule, stage by stage from the start: any non-empty set of ops whose
    inputs are done or inside it, split into its connected parts (at most s parts of
    at most r ops), or merged when it is >= 2 convs of one merge class."""
    n = len(graph)
    preds = [{u for u in graph.preds[v]} for v in range(n)]
    adjacent = [preds[v] | {w for w in range(n) if v in preds[w]} for v in range(n)]

    def parts(chosen: set[int]) -> list[set[int]]:
        left, out = set(chosen), []
        while left:
            part, todo = set(), [left.pop()]
            while todo:
                v = todo.pop()
                part.add(v)
                for w in adjacent[v] & chosen - part:
                    todo.append(w)
                    left.discard(w)
            out.append(part)
        return out

    def stage_cost(chosen: set[int]) -> float:
        options = []
        groups = parts(chosen)
        if len(groups) <= s and all(len(g) <= r for g in groups):
            options.append(OVERHEAD + max(sum(weights[graph.ops[v].name] for v in g) for g in groups))
        specs = [graph.ops[v].conv for v in chosen]
        if len(chosen) >= 2 and len(chosen) <= s and all(specs) and len({x.merge_class() for x in specs}) == 1:
            options.append(OVERHEAD + 0.7 * sum(weights[graph.ops[v].name] for v in chosen))
        return min(options, default=float("inf"))

    @functools.lru_cache(maxsize=None)
    def best(done: frozenset[int]) -> float:
        if len(done) == n:
            return 0.0
        rest = [v for v in range(n) if v not in done]
        value = float("inf")
        for size in range(1, len(rest) + 1):
            for subset in itertools.combinations(rest, size):
                chosen = set(subset)
                if all(preds[v] <= done | chosen for v in chosen):
                    value = min(value, stage_cost(chosen) + best(done | chosen))
        return value

    return best(frozenset())


def random_graph(rng: random.Random, n: int) -> tuple[OpGraph, dict[str, float]]:
    labels = [f"o{i}" for i in range(n)]
    edges = [(labels[u], labels[v]) for v in range(n) for u in range(v) if rng.random() < 0.3]
    convs = {}
    for v in range(n):  # some ops are convs reading op 0 or the graph input: merge candidates
        if rng.random() < 0.5 and (v == 0 or (labels[0], labels[v]) in edges):
            ins = [u for u, w in edges if w == labels[v]]
            if len(ins) <= 1:
                convs[labels[v]] = conv(ins[0] if ins else "input", rng.choice([1, 3]))
    weights = {label: float(rng.randint(1, 5)) for label in labels}
    return OpGraph.from_edges(labels, edges, convs=convs), weights


@pytest.mark.parametrize(("r", "s"), [(3, 8), (2, 2), (1, 3)])
def test_the_dynamic_program_finds_the_exhaustive_optimum(r, s):
    rng = random.Random(r * 10 + s)
    for _ in range(12):
        graph, weights = random_graph(rng, rng.randint(2, 7))
        settings = IOSSettings(max_group_size=r, max_num_groups=s)

        # The whole graph as one part: block cuts (tested apart) would restrict the search.
        estimate, stages = schedule_part(graph, list(range(len(graph))), synthetic_cost(weights), settings)

        check_schedule(graph, Schedule(tuple(stages), estimate, "ios"))
        assert estimate == pytest.approx(exhaustive_best(graph, weights, r, s))
        # The estimate is the sum of its own stages' costs.
        assert estimate == pytest.approx(sum(synthetic_cost(weights)(st) for st in stages))


def test_the_best_schedule_of_a_diamond_ends_with_the_ending_the_reference_misses():
    graph = OpGraph.from_edges("abcd", [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    weights = dict.fromkeys("abcd", 1.0)

    schedule = ios_schedule(graph, synthetic_cost(weights))

    assert [sorted(op.name for op in st.ops) for st in schedule.stages] == [["a"], ["b", "c", "d"]]
    assert schedule.estimated_ms == pytest.approx(exhaustive_best(graph, weights, 3, 8)) == 2 * OVERHEAD + 4


def test_convs_sharing_an_input_are_merged_when_merging_is_cheapest():
    graph = OpGraph.from_edges("pqr", [], convs={"p": conv("x", 1), "q": conv("x", 3), "r": conv("x", 5)})
    weights = {"p": 1.0, "q": 5.0, "r": 5.0}

    schedule = ios_schedule(graph, synthetic_cost(weights), IOSSettings(strategy="merge"))

    assert [st.kind for st in schedule.stages] == ["merge"]
    assert schedule.estimated_ms == pytest.approx(OVERHEAD + 0.7 * 11)


def test_never_worse_than_sequential_and_no_worse_than_greedy_under_the_same_costs():
    rng = random.Random(7)
    for _ in range(10):
        graph, weights = random_graph(rng, 7)
        cost = synthetic_cost(weights)

        ios = ios_schedule(graph, cost)

        assert ios.estimated_ms <= sequential_schedule(graph, cost).estimated_ms + 1e-9
        # Greedy stages may hold more than s groups; with s = 8 > 7 ops they are all candidates.
        assert ios.estimated_ms <= greedy_schedule(graph, cost).estimated_ms + 1e-9


def test_greedy_runs_every_ready_op_together():
    graph = OpGraph.from_edges("abcde", [("a", "c"), ("b", "c"), ("c", "d"), ("a", "e")])

    schedule = greedy_schedule(graph)

    assert [sorted(op.name for op in st.ops) for st in schedule.stages] == [["a", "b"], ["c", "e"], ["d"]]
    assert all(len(group) == 1 for st in schedule.stages for group in st.groups)


def test_stage_costs_are_measured_once_and_reused_by_a_second_schedule():
    # Two identical modules one after the other: same signatures, other names.
    names = ["s", "a1", "a2", "b1", "j", "c1", "c2", "d1", "k"]
    edges = [("s", "a1"), ("a1", "a2"), ("s", "b1"), ("a2", "j"), ("b1", "j"),
             ("j", "c1"), ("c1", "c2"), ("j", "d1"), ("c2", "k"), ("d1", "k")]
    signature = {"a1": "A", "a2": "B", "b1": "C", "j": "J", "c1": "A", "c2": "B", "d1": "C", "k": "J", "s": "S"}
    graph = OpGraph.from_edges(names, edges, signatures=signature)
    first_module = OpGraph.from_edges(names[:5], edges[:5], signatures=signature)
    calls: list[str] = []

    def counting_measure(stage: Stage) -> float:
        calls.append(stage.key)
        return 1.0 + len(stage.ops)

    memo: dict[str, float] = {}
    cost = MemoisedStageCost(counting_measure, memo)
    schedule = ios_schedule(graph, cost)
    measured_for_both_modules = list(calls)
    alone = MemoisedStageCost(counting_measure, {})
    ios_schedule(first_module, alone)

    assert len(measured_for_both_modules) == len(set(measured_for_both_modules)) == cost.measured  # once each
    assert cost.measured == alone.measured  # the second module measured nothing new
    again = MemoisedStageCost(counting_measure, memo)
    assert ios_schedule(graph, again).stages == schedule.stages
    assert again.measured == 0 and again.reused > 0


def test_a_measurement_that_is_not_a_latency_is_refused():
    graph = OpGraph.from_edges("a", [])

    with pytest.raises(ValueError, match="nan"):
        ios_schedule(graph, MemoisedStageCost(lambda stage: float("nan")))


def test_the_schedule_round_trips_through_json():
    graph, weights = random_graph(random.Random(3), 6)
    schedule = ios_schedule(graph, synthetic_cost(weights))

    data = schedule_to_json(schedule, graph, IOSSettings())
    back = schedule_from_json(data, graph)

    assert back.stages == schedule.stages and back.estimated_ms == schedule.estimated_ms
    assert data["settings"]["max_group_size"] == 3 and data["settings"]["max_num_groups"] == 8


def test_a_schedule_that_breaks_a_dependency_is_refused():
    graph = OpGraph.from_edges("ab", [("a", "b")])
    data = {"format": "ios-schedule/1", "ops": {"a": ["a"], "b": ["b"]},
            "stages": [{"kind": "parallel", "groups": [["b"]]}, {"kind": "parallel", "groups": [["a"]]}]}

    with pytest.raises(ValueError, match="'b' needs ops"):
        schedule_from_json(data, graph)


def test_bad_settings_name_the_setting():
    with pytest.raises(ValueError, match="max_group_size"):
        IOSSettings(max_group_size=0)
    with pytest.raises(ValueError, match="strategy"):
        IOSSettings(strategy="fastest")


def test_blocks_close_at_ops_every_path_goes_through():
    # s -> {a1 -> a2, b1} -> j -> {c1, d1} -> k, plus an op z independent of everything after s.
    names = ["s", "a1", "a2", "b1", "j", "c1", "d1", "k"]
    edges = [("s", "a1"), ("a1", "a2"), ("s", "b1"), ("a2", "j"), ("b1", "j"), ("j", "c1"), ("j", "d1"),
             ("c1", "k"), ("d1", "k")]
    graph = OpGraph.from_edges(names, edges)
    with_loose_op = OpGraph.from_edges(["z", *names], edges)

    found = [[graph.ops[v].name for v in block] for block in blocks(graph)]

    assert found == [["s"], ["a1", "a2", "b1", "j"], ["c1", "d1", "k"]]
    # z may run beside anything, so nothing before k cuts the graph.
    assert [len(b) for b in blocks(with_loose_op)] == [9]
