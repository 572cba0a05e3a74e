"""The schedule as a JSON artifact, stored next to the ONNX and TFLite files.

Format "ios-schedule/1" (read by ``device_agents.ios.schedule_file`` without
importing the engine)::

    {"format": "ios-schedule/1",
     "ops": {"<op>": ["<node id>", ...], ...},      # node id = first output tensor
     "stages": [{"kind": "parallel", "groups": [["<op>", ...], ...]},
                {"kind": "merge", "groups": [["<conv op>"], ["<conv op>"], ...]}],
     "estimated_ms": 1.23, "method": "ios", "settings": {...}, "search": {...}}
"""
from __future__ import annotations

import dataclasses
from typing import Any

from automl_server.engine.deploy.ios.graph import OpGraph, mask_of
from automl_server.engine.deploy.ios.scheduler import IOSSettings, Schedule
from automl_server.engine.deploy.ios.stage import make_stage

FORMAT = "ios-schedule/1"


def schedule_to_json(schedule: Schedule, graph: OpGraph, settings: IOSSettings | None = None,
                     search: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "method": schedule.method,
        "ops": {op.name: list(op.nodes) for op in graph.ops},
        "stages": [{"kind": s.kind, "groups": [[op.name for op in g] for g in s.groups]} for s in schedule.stages],
        "estimated_ms": schedule.estimated_ms,
        "settings": dataclasses.asdict(settings) if settings else {},
        "search": search or {},
    }


def check_schedule(graph: OpGraph, schedule: Schedule) -> None:
    """ValueError unless every op runs exactly once, after all of its inputs, and
    ops in different groups of a stage do not depend on each other."""
    index = graph.index()
    done = 0
    for number, stage in enumerate(schedule.stages):
        in_stage = mask_of(index[op.name] for op in stage.ops)
        if in_stage & done:
            raise ValueError(f"stage {number} runs an op a second time")
        for g, group in enumerate(stage.groups):
            own = mask_of(index[op.name] for op in group)
            for op in group:
                missing = mask_of(graph.preds[index[op.name]]) & ~done & ~own
                if missing:
                    raise ValueError(f"stage {number}: op {op.name!r} needs ops that have not run before it "
                                     f"(in another group of the stage, or later)")
        done |= in_stage
    if done != mask_of(range(len(graph))):
        raise ValueError(f"the schedule leaves {len(graph) - bin(done).count('1')} ops unscheduled")


def schedule_from_json(data: dict[str, Any], graph: OpGraph) -> Schedule:
    """The schedule a JSON artifact holds, checked against ``graph``."""
    if data.get("format") != FORMAT:
        raise ValueError(f"not an IOS schedule: format {data.get('format')!r}, expected {FORMAT!r}")
    index = graph.index()
    stages = []
    for number, raw in enumerate(data["stages"]):
        unknown = [name for group in raw["groups"] for name in group if name not in index]
        if unknown:
            raise ValueError(f"stage {number} names ops the graph does not have: {unknown}")
        stages.append(make_stage(graph, raw["kind"], [[index[name] for name in g] for g in raw["groups"]]))
    schedule = Schedule(tuple(stages), float(data.get("estimated_ms", float("nan"))), str(data.get("method", "")))
    check_schedule(graph, schedule)
    return schedule
