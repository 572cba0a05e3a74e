"""A schedule found with measured stage costs runs on the device executor and computes the model."""
from __future__ import annotations

import torch
from torch import nn

from automl_server.engine.deploy.ios import (
    IOSSettings,
    MemoisedStageCost,
    export_module_onnx,
    graph_from_onnx,
    greedy_schedule,
    ios_schedule,
    schedule_to_json,
)
from device_agents.ios import CpuExecutor, LocalStageMeasurer, OnnxModelProgram, ScheduledModel


class Module(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)

        def unit(cin: int, cout: int, k: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.ReLU())

        self.stem = unit(3, 8, 3)
        self.a = unit(8, 8, 1)
        self.b = nn.Sequential(unit(8, 8, 1), unit(8, 8, 3))
        self.c = nn.Sequential(nn.MaxPool2d(3, 1, 1), unit(8, 8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return torch.cat([self.a(x), self.b(x), self.c(x)], 1)


def test_measured_schedules_run_and_equal_the_sequential_run():
    model = export_module_onnx(Module().eval(), (1, 3, 10, 10))
    graph = graph_from_onnx(model)
    program = OnnxModelProgram(model)
    x = torch.randn(1, 3, 10, 10)
    with CpuExecutor(threads=2) as executor:
        measurer = LocalStageMeasurer(program, [x], executor, warmup=1, number=1, repeat=1)
        cost = MemoisedStageCost(measurer)

        ios = ios_schedule(graph, cost, IOSSettings())
        greedy = greedy_schedule(graph, cost)
        outputs = [ScheduledModel(program, schedule_to_json(s, graph))(x, executor=executor)[0] for s in (ios, greedy)]

    assert measurer.calls == cost.measured == len(cost.memo)  # each distinct stage timed once
    assert cost.reused > 0
    for out in outputs:
        torch.testing.assert_close(out, program.run_sequential(x)[0], rtol=1e-4, atol=1e-5)
