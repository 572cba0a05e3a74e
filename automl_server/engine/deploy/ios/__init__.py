"""IOS inter-operator scheduling (Ding et al., MLSys 2021) for deployment.

The operator graph of the exported ONNX model (``onnx_graph``), the dynamic
program over operator sets with its pruning and block partitioning
(``scheduler``, ``endings``, ``partition``), the greedy and sequential
baselines, stage keys and memoised costs (``stage``, ``cost``) and the JSON
artifact (``schedule_json``). Stage latencies come from a ``measure(stage)``
function passed in; the device-side executor and the local CPU measurer live
in ``device_agents.ios``, which this package never imports.
"""
from __future__ import annotations

from automl_server.engine.deploy.ios.candidates import MissingStageCost, RecordedCost, candidate_stages
from automl_server.engine.deploy.ios.cost import MeasureFn, MemoisedStageCost
from automl_server.engine.deploy.ios.endings import groups_of, is_ending, is_mergeable, iter_endings
from automl_server.engine.deploy.ios.graph import ConvSpec, Op, OpGraph
from automl_server.engine.deploy.ios.onnx_graph import export_module_onnx, graph_from_onnx
from automl_server.engine.deploy.ios.partition import blocks, parts
from automl_server.engine.deploy.ios.schedule_json import check_schedule, schedule_from_json, schedule_to_json
from automl_server.engine.deploy.ios.scheduler import (
    IOSSettings,
    Schedule,
    greedy_schedule,
    ios_schedule,
    schedule_part,
    sequential_schedule,
)
from automl_server.engine.deploy.ios.stage import MERGE, PARALLEL, Stage, make_stage

__all__ = [
    "MERGE",
    "PARALLEL",
    "ConvSpec",
    "IOSSettings",
    "MeasureFn",
    "MemoisedStageCost",
    "MissingStageCost",
    "Op",
    "RecordedCost",
    "OpGraph",
    "Schedule",
    "Stage",
    "blocks",
    "candidate_stages",
    "check_schedule",
    "export_module_onnx",
    "graph_from_onnx",
    "greedy_schedule",
    "groups_of",
    "ios_schedule",
    "is_ending",
    "is_mergeable",
    "iter_endings",
    "make_stage",
    "parts",
    "schedule_from_json",
    "schedule_part",
    "schedule_to_json",
    "sequential_schedule",
]
