"""The same schedules run on ONNX Runtime kernels: one small session per group.

ONNX Runtime runs a whole graph; to run the groups of a stage side by side
each group of a stage (its operators' nodes, e.g. Conv + Relu, which ORT
fuses) becomes its own model and session, and a merge stage one session of
the wider convolution. A group of several operators is one session, not one
per operator: the reference launches a group's kernels back to back on its
stream with no host round trip between them, and a Python call per operator
(tens of microseconds) would cost more than the operators of a small network.
The sequential schedule (one operator per stage) keeps one call per operator,
as the paper's baseline runs one kernel after another. A session's intra-op
thread count is fixed when it is made, so a group keeps one session per count
the executor hands out (``current_threads``). Tensors travel between sessions as numpy arrays.
The PyTorch program (``program.py``) remains for CUDA streams.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, shape_inference

from device_agents.ios.executor import Executor, current_threads
from device_agents.ios.onnx_ops import fold_identity_constants


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # No spinning between runs: groups on other threads need the cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def whole_graph_session(model_bytes: bytes, parallel: bool, threads: int) -> ort.InferenceSession:
    """The model as one ONNX Runtime session with the executor's options (so that only the schedule
    differs from the scheduled runs): ORT's own sequential or parallel execution mode.

    Parallel mode gets as many inter-op threads as the IOS executor may run at once: at least one per
    core, as a stage of g groups runs g threads even when the target has fewer intra-op threads
    (``split_threads``); with ``threads`` inter-op threads only, a 1-thread target would leave ORT's
    parallel mode sequential while IOS used every core."""
    options = session_options(threads)
    if parallel:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = max(threads, os.cpu_count() or 1)
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


@dataclass
class OpSession:
    """One operator as its own model; sessions made per thread count on first use."""

    model_bytes: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    slices: tuple[tuple[str, int, int], ...] = ()  # merge: (op output, first channel, end channel)
    sessions: dict[int, ort.InferenceSession] = field(default_factory=dict)

    def session(self, threads: int) -> ort.InferenceSession:
        found = self.sessions.get(threads)
        if found is None:
            found = ort.InferenceSession(self.model_bytes, session_options(threads),
                                         providers=["CPUExecutionProvider"])
            self.sessions[threads] = found
        return found

    def run(self, env: dict[str, np.ndarray], default_threads: int) -> None:
        results = self.session(current_threads(default_threads)).run(None, {n: env[n] for n in self.inputs})
        if self.slices:
            for name, begin, end in self.slices:
                env[name] = results[0][:, begin:end]
            return
        for name, value in zip(self.outputs, results):
            env[name] = value


@dataclass(frozen=True)
class OrtStage:
    groups: tuple[tuple[OpSession, ...], ...]
    threads: int

    def run(self, env: dict[str, np.ndarray], executor: Executor) -> None:
        def task(group: tuple[OpSession, ...]) -> Any:
            def run() -> None:
                for op in group:
                    op.run(env, self.threads)
            return run

        executor.run([task(group) for group in self.groups])


class OrtModelProgram:
    """Same interface as OnnxModelProgram (stage, feed, run_sequential, all_tensors), on ORT kernels."""

    def __init__(self, model: onnx.ModelProto, threads: int = 1) -> None:
        self.model = shape_inference.infer_shapes(fold_identity_constants(model))
        self.threads = threads
        graph = self.model.graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.constant_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
        self.nodes = {n.output[0]: n for n in graph.node if n.op_type != "Constant"}
        self.value_info = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
        self.inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.outputs = [o.name for o in graph.output]
        self.order = list(self.nodes)
        self._position = {node_id: i for i, node_id in enumerate(self.order)}
        self._graph_outputs = set(self.outputs)
        self._readers: dict[str, set[str]] = {}  # tensor -> ids of the nodes that read it
        for node_id, node in self.nodes.items():
            for name in node.input:
                self._readers.setdefault(name, set()).add(node_id)
        self.device = "cpu"
        self._ops: dict[tuple[str, ...], OpSession] = {}
        self._merges: dict[tuple[tuple[str, ...], ...], OpSession] = {}

    def _is_const(self, name: str) -> bool:
        return name in self.initializers or name in self.constant_nodes

    def _submodel(self, nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto],
                  outputs: list[str]) -> tuple[bytes, tuple[str, ...]]:
        produced = {o for n in nodes for o in n.output} | {t.name for t in initializers}
        inputs = list(dict.fromkeys(i for n in nodes for i in n.input
                                    if i and i not in produced and not self._is_const(i)))
        consts = list(dict.fromkeys(i for n in nodes for i in n.input if i and i not in produced
                                    and self._is_const(i)))
        const_nodes = [self.constant_nodes[c] for c in consts if c in self.constant_nodes]
        inits = [self.initializers[c] for c in consts if c in self.initializers] + initializers
        graph = helper.make_graph(const_nodes + nodes, "op", [self.value_info[i] for i in inputs],
                                  [self.value_info[o] if o in self.value_info else
                                   helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs],
                                  inits)
        model = helper.make_model(graph, opset_imports=self.model.opset_import)
        model.ir_version = self.model.ir_version
        return model.SerializeToString(), tuple(inputs)

    def op(self, node_ids: Sequence[str]) -> OpSession:
        key = tuple(node_ids)
        if key not in self._ops:
            nodes = [self.nodes[n] for n in node_ids]
            outputs = [nodes[-1].output[0]]
            data, inputs = self._submodel(nodes, [], outputs)
            self._ops[key] = OpSession(data, inputs, tuple(outputs))
        return self._ops[key]

    def group(self, ops: Sequence[Sequence[str]]) -> OpSession:
        """One session for a group's operators (any small DAG, in the model's order). Its outputs are
        the tensors read outside the group or returned by the model; tensors only the group reads
        stay inside the session, where ORT may fuse across the operators' boundary as it does in a
        whole-graph run."""
        if len(ops) == 1:
            return self.op(ops[0])
        ids = sorted({n for op in ops for n in op}, key=self._position.__getitem__)
        key = ("group", *ids)
        if key not in self._ops:
            inside = set(ids)
            nodes = [self.nodes[n] for n in ids]
            outputs = [o for n in nodes for o in n.output
                       if o in self._graph_outputs or self._readers.get(o, set()) - inside]
            data, inputs = self._submodel(nodes, [], outputs)
            self._ops[key] = OpSession(data, inputs, tuple(outputs))
        return self._ops[key]

    def merged(self, ops: Sequence[Sequence[str]]) -> OpSession:
        """The wider convolution of a merge stage (zero-padded centred kernels, as merge.py)."""
        key = tuple(tuple(op) for op in ops)
        if key in self._merges:
            return self._merges[key]
        convs = [self.nodes[op[0]] for op in ops]
        weights = [numpy_helper.to_array(self.initializers[c.input[1]]) for c in convs]
        biases = [numpy_helper.to_array(self.initializers[c.input[2]]) if len(c.input) > 2 and c.input[2]
                  else np.zeros(w.shape[0], np.float32) for c, w in zip(convs, weights)]
        attrs = [{a.name: helper.get_attribute_value(a) for a in c.attribute} for c in convs]
        if len({c.input[0] for c in convs}) != 1 or any(a.get("group", 1) != 1 for a in attrs):
            raise ValueError("merged convolutions must read one tensor and be dense (group 1)")
        kh, kw = max(w.shape[2] for w in weights), max(w.shape[3] for w in weights)
        pads = [list(a.get("pads", [0, 0, 0, 0])) for a in attrs]
        ph, pw = max(p[0] for p in pads), max(p[1] for p in pads)
        weight = np.zeros((sum(w.shape[0] for w in weights), weights[0].shape[1], kh, kw), np.float32)
        slices, begin = [], 0
        for op, w, p in zip(ops, weights, pads):
            dh, dw = (kh - w.shape[2]) // 2, (kw - w.shape[3]) // 2
            if p[0] != p[2] or p[1] != p[3] or ph - p[0] != dh or pw - p[1] != dw:
                raise ValueError(f"conv {op[0]!r} does not stay centred in a {kh}x{kw} kernel")
            weight[begin:begin + w.shape[0], :, dh:dh + w.shape[2], dw:dw + w.shape[3]] = w
            slices.append((self.nodes[op[-1]].output[0], begin, begin + w.shape[0]))
            begin += w.shape[0]
        name = f"ios_merge_{len(self._merges)}"
        conv = helper.make_node("Conv", [convs[0].input[0], f"{name}_w", f"{name}_b"], [f"{name}_out"],
                                kernel_shape=[kh, kw], pads=[ph, pw, ph, pw],
                                strides=attrs[0].get("strides", [1, 1]), dilations=attrs[0].get("dilations", [1, 1]))
        nodes = [conv]
        out = f"{name}_out"
        first = [self.nodes[n] for n in ops[0]]
        if len(first) == 2:  # the shared activation, once on the whole output
            act = onnx.NodeProto()
            act.CopyFrom(first[1])
            act.input[0] = out
            del act.output[:]
            act.output.append(f"{name}_act")
            nodes.append(act)
            out = f"{name}_act"
        data, inputs = self._submodel(nodes, [numpy_helper.from_array(weight, f"{name}_w"),
                                              numpy_helper.from_array(np.concatenate(biases), f"{name}_b")], [out])
        session = OpSession(data, inputs, (out,), tuple(slices))
        self._merges[key] = session
        return session

    def stage(self, kind: str, groups: Sequence[Sequence[str]], ops: Mapping[str, Sequence[str]]) -> OrtStage:
        missing = [op for group in groups for op in group if op not in ops]
        if missing:
            raise ValueError(f"the schedule names {missing[0]!r}, which it does not list among its ops")
        if kind == "merge" and len(groups) > 1:
            return OrtStage(((self.merged([ops[g[0]] for g in groups]),),), self.threads)
        if kind not in ("parallel", "merge"):
            raise ValueError(f"unknown stage kind {kind!r}; expected 'parallel' or 'merge'")
        return OrtStage(tuple((self.group([ops[op] for op in group]),) for group in groups), self.threads)

    def feed(self, inputs: Sequence[Any]) -> dict[str, np.ndarray]:
        if len(inputs) != len(self.inputs):
            raise ValueError(f"the model takes {len(self.inputs)} inputs ({', '.join(self.inputs)}), "
                             f"got {len(inputs)}")
        return {name: np.ascontiguousarray(np.asarray(x, dtype=np.float32)) for name, x in zip(self.inputs, inputs)}

    def all_tensors(self, *inputs: Any) -> dict[str, np.ndarray]:
        env = self.feed(inputs)
        for node_id in self.order:
            self.op([node_id]).run(env, self.threads)
        return env

    def run_sequential(self, *inputs: Any) -> list[np.ndarray]:
        env = self.all_tensors(*inputs)
        return [env[name] for name in self.outputs]
