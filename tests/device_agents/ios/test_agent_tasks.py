"""The agent's IOS tasks through the protocol: stages of a shipped ONNX model
timed and answered as MeasureStagesReply, schedules timed side by side."""
from __future__ import annotations

import io
import warnings

import onnx
import pytest
import torch
from torch import nn

from automl_server.engine.deploy.ios import (
    candidate_stages,
    graph_from_onnx,
    greedy_schedule,
    ios_schedule,
    schedule_to_json,
    sequential_schedule,
)
from device_agents.protocol import (
    IOSStagePayload,
    MeasureStagesReply,
    MeasureStagesRequest,
    ModelFile,
    ProtocolError,
    TargetPayload,
    TimeSchedulesReply,
    TimeSchedulesRequest,
)
from device_agents.tasks import measure_ios_stages, time_schedules

# Short measurements: these tests are about the protocol, not the figures.
QUICK = {"warmup": 1, "block_size": 2, "min_blocks": 2, "max_blocks": 2, "yardstick": False}


class Inceptionish(nn.Module):
    """An Inception-like block at 8x8: 1x1, 1x1 -> 3x3, 3x3 reading one tensor, a pool branch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.b3b = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.ReLU())
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), nn.Conv2d(8, 4, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return torch.cat([self.b1(x), self.b3(x), self.b3b(x), self.bp(x)], 1)


def inception_onnx() -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Inceptionish().eval(), (torch.zeros(1, 3, 8, 8),), buffer, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"])
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return inception_onnx()


def target(backend: str = "onnxruntime") -> TargetPayload:
    return TargetPayload("cpu-1", backend, "test", threads=2)


def payloads(model_bytes: bytes) -> list[IOSStagePayload]:
    graph = graph_from_onnx(onnx.load_from_string(model_bytes))
    return [IOSStagePayload(s.key, s.kind, tuple(tuple(op.name for op in g) for g in s.groups),
                            {op.name: tuple(op.nodes) for op in s.ops}) for s in candidate_stages(graph).values()]


@pytest.mark.parametrize("backend", ["onnxruntime", "pytorch"])
def test_the_agent_times_every_stage_it_is_sent_and_answers_by_key(model_bytes, backend):
    stages = payloads(model_bytes)
    assert any(s.kind == "merge" for s in stages) and any(len(s.groups) > 1 for s in stages)
    request = MeasureStagesRequest(target(backend), ModelFile.from_bytes("onnx", model_bytes), tuple(stages), QUICK)
    # Through the wire format: positional JSON arguments in, a JSON dict out.
    reply = MeasureStagesReply.from_dict(measure_ios_stages(*request.to_args()))
    assert [r.key for r in reply.results] == [s.key for s in stages]
    assert all(r.error is None and r.stats["median_ms"] > 0 for r in reply.results), \
        [r.error for r in reply.results if r.error]


def test_a_stage_naming_unknown_operators_fails_alone(model_bytes):
    good = payloads(model_bytes)[0]
    bad = IOSStagePayload("ios-stage/1:parallel:" + "0" * 40, "parallel", (("nope",),), {"nope": ("missing",)})
    request = MeasureStagesRequest(target(), ModelFile.from_bytes("onnx", model_bytes), (bad, good), QUICK)
    reply = MeasureStagesReply.from_dict(measure_ios_stages(*request.to_args()))
    assert reply.results[0].error and "missing" in reply.results[0].error
    assert reply.results[1].error is None


def test_a_malformed_stage_is_refused_naming_the_field():
    with pytest.raises(ProtocolError, match=r"stages\[0\]\.kind"):
        MeasureStagesRequest.from_args(target().to_dict(), {"format": "onnx", "b64": ""},
                                       [{"key": "k", "kind": "sideways", "groups": [], "ops": {}}])


def test_the_agent_times_the_model_under_each_schedule_and_onnx_runtime_side_by_side(model_bytes):
    graph = graph_from_onnx(onnx.load_from_string(model_bytes))
    ios = ios_schedule(graph, lambda stage: float(len(stage.ops)) / len(stage.groups))  # a made-up cost
    schedules = {s.method: schedule_to_json(s, graph) for s in (sequential_schedule(graph), greedy_schedule(graph), ios)}
    request = TimeSchedulesRequest(target(), ModelFile.from_bytes("onnx", model_bytes), schedules,
                                   {"min_rounds": 2, "min_seconds": 0.05, "yardstick": False})
    reply = TimeSchedulesReply.from_dict(time_schedules(*request.to_args()))
    assert reply.error is None, reply.error
    assert set(reply.latencies_ms) == {"sequential", "greedy", "ios", "ort_sequential", "ort_parallel"}
    assert all(ms > 0 for ms in reply.latencies_ms.values())


def test_a_schedule_that_computes_something_else_is_reported_not_timed(model_bytes):
    graph = graph_from_onnx(onnx.load_from_string(model_bytes))
    broken = schedule_to_json(sequential_schedule(graph), graph)
    broken["stages"] = broken["stages"][:-1]  # the last operator never runs
    request = TimeSchedulesRequest(target(), ModelFile.from_bytes("onnx", model_bytes), {"ios": broken},
                                   {"min_rounds": 2, "min_seconds": 0.05, "yardstick": False})
    reply = TimeSchedulesReply.from_dict(time_schedules(*request.to_args()))
    assert reply.error is not None and not reply.latencies_ms
