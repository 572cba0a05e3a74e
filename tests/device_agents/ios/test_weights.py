"""The "onnx-weightless" model format of the IOS tasks: the server leaves the large weights out, the
agent fills them, and the stages and schedules are timed on the filled model."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from automl_server.engine.deploy.ios import graph_from_onnx, ios_schedule, schedule_to_json, sequential_schedule
from automl_server.jobs.ios_weights import weightless_onnx
from device_agents.ios.weights import load_model_file
from device_agents.protocol import (
    WEIGHTLESS_MIN_ELEMENTS,
    MeasureStagesReply,
    MeasureStagesRequest,
    ModelFile,
    TimeSchedulesReply,
    TimeSchedulesRequest,
)
from device_agents.tasks import measure_ios_stages, time_schedules
from tests.device_agents.ios.test_agent_tasks import QUICK, payloads, target


class TwoBranches(nn.Module):
    """Wide enough that its convolutions' weights are left out (64 x 32 x 3 x 3 = 18,432 floats)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(32, 64, 1), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.a(x), self.b(x)], 1).mean((2, 3))
        return self.head(x.reshape(1, 128))


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TwoBranches().eval(), (torch.zeros(1, 3, 16, 16),), buffer, dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["output"])
    return buffer.getvalue()


def test_only_large_float_weights_are_left_out_and_the_agent_fills_them_to_a_model_that_runs(model_bytes):
    original = {t.name: t for t in onnx.load_from_string(model_bytes).graph.initializer}
    light = weightless_onnx(model_bytes)
    assert len(light) < len(model_bytes) / 10
    sent = {t.name: t for t in onnx.load_from_string(light).graph.initializer}
    assert set(sent) == set(original)
    for name, tensor in original.items():
        large = tensor.data_type == onnx.TensorProto.FLOAT and np.prod(tensor.dims) >= WEIGHTLESS_MIN_ELEMENTS
        empty = not sent[name].raw_data and not sent[name].float_data
        assert empty == large, name  # biases and integer tensors (shapes) travel whole
        assert list(sent[name].dims) == list(tensor.dims)

    filled = load_model_file(ModelFile.from_bytes("onnx-weightless", light))
    onnx.checker.check_model(filled)
    session = ort.InferenceSession(filled.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": np.random.default_rng(0).standard_normal((1, 3, 16, 16), np.float32)})[0]
    assert out.shape == (1, 10) and np.isfinite(out).all() and np.abs(out).max() > 0
    # Seeded: two agents fill the same values.
    again = load_model_file(ModelFile.from_bytes("onnx-weightless", light))
    assert all(a.SerializeToString() == b.SerializeToString()
               for a, b in zip(filled.graph.initializer, again.graph.initializer))


def test_the_ios_tasks_time_a_weightless_model(model_bytes):
    shipped = ModelFile.from_bytes("onnx-weightless", weightless_onnx(model_bytes))
    stages = payloads(model_bytes)
    reply = MeasureStagesReply.from_dict(measure_ios_stages(
        *MeasureStagesRequest(target(), shipped, tuple(stages), QUICK).to_args()))
    assert all(r.error is None and r.stats["median_ms"] > 0 for r in reply.results), \
        [r.error for r in reply.results if r.error]

    graph = graph_from_onnx(onnx.load_from_string(model_bytes))
    ios = ios_schedule(graph, lambda stage: float(len(stage.ops)) / len(stage.groups))
    schedules = {s.method: schedule_to_json(s, graph) for s in (sequential_schedule(graph), ios)}
    timed = TimeSchedulesReply.from_dict(time_schedules(*TimeSchedulesRequest(
        target(), shipped, schedules, {"min_rounds": 2, "min_seconds": 0.05, "yardstick": False}).to_args()))
    assert timed.error is None, timed.error
    assert set(timed.latencies_ms) >= {"sequential", "ios", "ort_sequential", "ort_parallel"}


def test_a_tflite_file_is_refused_by_the_ios_tasks_naming_the_formats_they_take():
    with pytest.raises(ValueError, match="'onnx' or 'onnx-weightless'"):
        load_model_file(ModelFile.from_bytes("tflite", b"TFL3"))


def test_the_agent_keeps_the_last_model_prepared_and_never_times_a_stale_one(model_bytes):
    from tests.device_agents.ios.test_agent_tasks import inception_onnx

    other = inception_onnx()
    for data in (model_bytes, model_bytes, other, model_bytes):  # repeated chunks, then another model
        shipped = ModelFile.from_bytes("onnx-weightless", weightless_onnx(data))
        stages = payloads(data)[:3]
        reply = MeasureStagesReply.from_dict(measure_ios_stages(
            *MeasureStagesRequest(target(), shipped, tuple(stages), QUICK).to_args()))
        # A stale program would not know this model's operators and fail every stage.
        assert [r.key for r in reply.results] == [s.key for s in stages]
        assert all(r.error is None for r in reply.results), [r.error for r in reply.results]
