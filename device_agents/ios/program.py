"""An ONNX model run stage by stage as a schedule says.

The schedule format ("ios-schedule/1", written by the service's scheduler)
names operators, the model nodes each runs (a node is named by its first
output tensor), and the stages: concurrent groups of operators, or a merge
of convolutions. This module reads it without importing the service.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import onnx
import torch

from device_agents.ios.executor import Executor
from device_agents.ios.merge import MergedConv, merge_convs
from device_agents.ios.onnx_ops import CompiledNode, compile_nodes

if TYPE_CHECKING:
    import numpy as np

FORMAT = "ios-schedule/1"
Tensor = torch.Tensor


@dataclass(frozen=True)
class RunnableStage:
    kind: str
    groups: tuple[tuple[CompiledNode, ...], ...]  # parallel: nodes of each group in order
    merged: MergedConv | None  # merge: the wider convolution

    def run(self, env: dict[str, Tensor], executor: Executor) -> None:
        if self.merged is not None:
            self.merged.run(env)
            return
        executor.run([_group_task(group, env) for group in self.groups])


def _group_task(nodes: tuple[CompiledNode, ...], env: dict[str, Tensor]) -> Callable[[], None]:
    def task() -> None:
        # Different groups write different keys; CPython dict stores are atomic.
        for node in nodes:
            node.run(env)

    return task


class OnnxModelProgram:
    """A model's nodes compiled once; stages built from schedule entries."""

    def __init__(self, model: onnx.ModelProto, device: torch.device | str = "cpu") -> None:
        self.model = model
        self.device = torch.device(device)
        self.nodes, _ = compile_nodes(model, self.device)
        initializers = {t.name for t in model.graph.initializer}
        self.inputs = [i.name for i in model.graph.input if i.name not in initializers]
        self.outputs = [o.name for o in model.graph.output]
        self.order = list(self.nodes)  # ONNX keeps nodes topologically sorted

    def stage(self, kind: str, groups: Sequence[Sequence[str]], ops: Mapping[str, Sequence[str]]) -> RunnableStage:
        """A runnable stage from op names and the op -> node ids table."""
        try:
            op_nodes = [[[self.nodes[n] for n in ops[op]] for op in group] for group in groups]
        except KeyError as exc:
            raise ValueError(f"the schedule names {exc.args[0]!r}, which this model does not have") from None
        if kind == "merge":
            if len(op_nodes) == 1:  # one op: nothing to merge
                return RunnableStage("parallel", (tuple(op_nodes[0][0]),), None)
            return RunnableStage(kind, (), merge_convs([group[0] for group in op_nodes]))
        if kind != "parallel":
            raise ValueError(f"unknown stage kind {kind!r}; expected 'parallel' or 'merge'")
        return RunnableStage(kind, tuple(tuple(n for op in group for n in op) for group in op_nodes), None)

    def feed(self, inputs: Sequence[Tensor]) -> dict[str, Tensor]:
        if len(inputs) != len(self.inputs):
            raise ValueError(f"the model takes {len(self.inputs)} inputs ({', '.join(self.inputs)}), "
                             f"got {len(inputs)}")
        return {name: x.to(self.device) for name, x in zip(self.inputs, inputs)}

    def run_sequential(self, *inputs: Tensor) -> list[Tensor]:
        """Every node in the model's order (the sequential schedule)."""
        env = self.feed(inputs)
        with torch.inference_mode():
            for node_id in self.order:
                self.nodes[node_id].run(env)
        return [env[name] for name in self.outputs]

    def all_tensors(self, *inputs: Tensor) -> dict[str, Tensor]:
        env = self.feed(inputs)
        with torch.inference_mode():
            for node_id in self.order:
                self.nodes[node_id].run(env)
        return env


class ScheduledModel:
    """The model and its schedule: ``model(x, executor=...)`` runs it stage by stage
    (on an OnnxModelProgram's PyTorch kernels or an OrtModelProgram's ORT ones)."""

    def __init__(self, program: Any, schedule: Mapping[str, Any]) -> None:
        if schedule.get("format") != FORMAT:
            raise ValueError(f"not an IOS schedule: format {schedule.get('format')!r}, expected {FORMAT!r}")
        self.program = program
        self.schedule = schedule
        ops = schedule["ops"]
        self.stages = [program.stage(s["kind"], s["groups"], ops) for s in schedule["stages"]]
        scheduled = [n for op in ops.values() for n in op]
        missing = set(program.nodes) - set(scheduled)
        if missing or len(scheduled) != len(set(scheduled)):
            raise ValueError(f"the schedule must run every node once; missing {sorted(missing)[:5]}")

    def __call__(self, *inputs: Tensor | np.ndarray, executor: Executor) -> list[Tensor | np.ndarray]:
        """The model's outputs; tensors in and out on PyTorch kernels, numpy arrays on ORT's."""
        env = self.program.feed(inputs)
        with torch.inference_mode():
            for stage in self.stages:
                stage.run(env, executor)
        return [env[name] for name in self.program.outputs]
