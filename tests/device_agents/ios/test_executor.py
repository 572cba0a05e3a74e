"""The device-side executor: merged convolutions and scheduled runs compute what the model computes."""
from __future__ import annotations

import io
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from device_agents.ios import (
    CpuExecutor,
    CudaExecutor,
    LocalStageMeasurer,
    OnnxModelProgram,
    OrtModelProgram,
    ScheduledModel,
    SequentialExecutor,
    load_scheduled,
    split_threads,
)


def export(module: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(shape),), buffer, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"])
    return onnx.load_from_string(buffer.getvalue())


def conv_act(cin: int, cout: int, kernel: tuple[int, int], stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding=(kernel[0] // 2, kernel[1] // 2)),
                         nn.BatchNorm2d(cout), nn.ReLU6())


class Branchy(nn.Module):
    """Convs of different kernels reading one tensor, a two-conv branch, a pool branch, a residual add."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = conv_act(3, 8, (3, 3))
        self.k1 = conv_act(8, 4, (1, 1))
        self.k3 = conv_act(8, 4, (3, 3))
        self.k5 = conv_act(8, 4, (5, 5))
        self.k17 = conv_act(8, 4, (1, 7))
        self.k71 = conv_act(8, 4, (7, 1))
        self.deep = nn.Sequential(conv_act(8, 8, (1, 1)), conv_act(8, 4, (3, 3)))
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.head = nn.Linear(28, 5)
        for bn in self.modules():  # non-trivial folded BatchNorm
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.cat([self.k1(x), self.k3(x), self.k5(x), self.k17(x), self.k71(x), self.deep(x), self.pool(x)[:, :4]
                       + self.k1(x)], 1)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return export(Branchy(), (1, 3, 12, 12))


def conv_ops(program: OnnxModelProgram, *names: str) -> dict[str, list[str]]:
    """op -> its nodes for the Conv (+ Clip) of the named submodules."""
    ops = {}
    for name in names:
        conv = next(n for n in program.nodes if n.startswith(f"/{name}/") and n.endswith("Conv_output_0"))
        clip = next(n for n in program.nodes if n.startswith(f"/{name}/") and n.endswith("Clip_output_0"))
        ops[conv] = [conv, clip]
    return ops


def test_merged_convolutions_equal_the_separate_ones(model):
    program = OnnxModelProgram(model)
    env = program.all_tensors(torch.randn(1, 3, 12, 12))
    ops = conv_ops(program, "k1", "k3", "k5", "k17", "k71")

    merged = program.stage("merge", [[op] for op in ops], ops)
    merged_env = {name: value for name, value in env.items() if not any(name in nodes for nodes in ops.values())}
    merged.run(merged_env, SequentialExecutor())

    assert merged.merged is not None and tuple(merged.merged.weight.shape[2:]) == (7, 7)
    for nodes in ops.values():
        torch.testing.assert_close(merged_env[nodes[-1]], env[nodes[-1]], rtol=1e-4, atol=1e-5)


def test_convolutions_that_cannot_stay_centred_or_differ_in_stride_are_not_merged():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(3, 4, 3, padding=0)  # a 3x3 "valid" conv: off-centre in a padded kernel

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x)[:, :, 1:-1, 1:-1] + self.b(x)

    program = OnnxModelProgram(export(Odd(), (1, 3, 8, 8)))
    convs = [n for n in program.nodes if n.endswith("Conv_output_0")]

    with pytest.raises(ValueError, match="does not stay centred"):
        program.stage("merge", [[c] for c in convs], {c: [c] for c in convs})


def schedule_with_every_stage_kind(program: OnnxModelProgram) -> dict:
    """Hand-written: stem; a merge; four concurrent groups (one of two convs); the rest in order."""
    ops = {node: [node] for node in program.order}
    merged = conv_ops(program, "k3", "k5", "k17")
    for conv, nodes in merged.items():
        ops[conv] = nodes
        del ops[nodes[1]]
    stem = [n for n in program.order if n.startswith("/stem/")]
    ops = {k: v for k, v in ops.items() if k not in stem}
    ops[stem[0]] = stem
    deep = [n for n in program.order if n.startswith("/deep/")]
    k71 = [n for n in program.order if n.startswith("/k71/")]
    pool = [n for n in program.order if n.startswith("/pool/")]
    stages = [{"kind": "parallel", "groups": [[stem[0]]]},
              {"kind": "merge", "groups": [[c] for c in merged]},
              {"kind": "parallel", "groups": [deep, k71, pool]}]
    placed = set(stem) | {n for v in merged.values() for n in v} | set(deep) | set(k71) | set(pool)
    stages += [{"kind": "parallel", "groups": [[n]]} for n in program.order if n not in placed]
    return {"format": "ios-schedule/1", "ops": ops, "stages": stages}


def test_a_scheduled_run_on_threads_equals_the_sequential_run_and_onnx_runtime(model, tmp_path):
    program = OnnxModelProgram(model)
    schedule = schedule_with_every_stage_kind(program)
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    (tmp_path / "model.schedule.json").write_text(json.dumps(schedule))
    x = torch.randn(1, 3, 12, 12)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    scheduled = load_scheduled(tmp_path / "model.onnx", tmp_path / "model.schedule.json")
    with CpuExecutor(threads=2) as executor:
        outputs = [scheduled(x, executor=executor)[0] for _ in range(3)]

    sequential = program.run_sequential(x)[0]
    for out in outputs:
        torch.testing.assert_close(out, sequential, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs[0].numpy(), session.run(None, {"input": x.numpy()})[0], rtol=1e-4, atol=1e-4)


def test_the_same_schedule_on_onnx_runtime_kernels_equals_the_sequential_run(model, tmp_path):
    torch_program = OnnxModelProgram(model)
    schedule = schedule_with_every_stage_kind(torch_program)
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    (tmp_path / "model.schedule.json").write_text(json.dumps(schedule))
    x = torch.randn(1, 3, 12, 12)

    scheduled = load_scheduled(tmp_path / "model.onnx", tmp_path / "model.schedule.json", backend="ort", threads=2)
    with CpuExecutor(threads=2) as executor:
        out = scheduled(x.numpy(), executor=executor)[0]

    assert isinstance(scheduled.program, OrtModelProgram)
    np.testing.assert_allclose(out, torch_program.run_sequential(x)[0].numpy(), rtol=1e-4, atol=1e-4)


def test_a_group_of_operators_runs_as_one_onnx_runtime_session_returning_only_what_others_read(model):
    program = OrtModelProgram(model, threads=1)
    deep = [n for n in program.order if n.startswith("/deep/")]  # conv, clip, conv, clip: one chain
    ops = {n: [n] for n in deep}

    stage = program.stage("parallel", [deep], ops)

    (session,) = stage.groups[0]
    assert session.outputs == (deep[-1],)  # the intermediate tensors stay inside the session
    env = program.feed([np.random.default_rng(0).standard_normal((1, 3, 12, 12)).astype(np.float32)])
    reference = program.all_tensors(*env.values())
    for node in program.order[:program.order.index(deep[0])]:
        env[node] = reference[node]
    with CpuExecutor(threads=1) as executor:
        stage.run(env, executor)
    np.testing.assert_allclose(env[deep[-1]], reference[deep[-1]], rtol=1e-5, atol=1e-6)
    assert deep[0] not in env  # not returned, so not copied out


def test_a_schedule_that_skips_nodes_is_refused(model):
    program = OnnxModelProgram(model)
    schedule = schedule_with_every_stage_kind(program)
    dropped = schedule["stages"].pop()["groups"][0][0]  # the last node's stage and op
    del schedule["ops"][dropped]

    with pytest.raises(ValueError, match="every node once"):
        ScheduledModel(program, schedule)


def test_the_stage_measurer_times_a_stage_in_milliseconds(model):
    program = OnnxModelProgram(model)
    schedule = schedule_with_every_stage_kind(program)
    measurer = LocalStageMeasurer(program, [torch.randn(1, 3, 12, 12)], SequentialExecutor(),
                                  warmup=1, number=2, repeat=2)

    latency_ms = measurer({**schedule["stages"][2], "ops": schedule["ops"]})

    assert 0.0 < latency_ms < 1000.0 and measurer.calls == 1


def test_threads_are_split_between_groups():
    assert split_threads(8, 3) == [3, 3, 2]
    assert split_threads(2, 3) == [1, 1, 1]  # more groups than threads: one each
    assert split_threads(4, 1) == [4]


def test_each_group_runs_with_its_share_of_threads_and_the_callers_count_is_restored():
    import threading

    from device_agents.ios import current_threads

    seen: list[tuple[str, int, int]] = []

    def group() -> None:
        seen.append((threading.current_thread().name, current_threads(0), torch.get_num_threads()))

    before = torch.get_num_threads()
    with CpuExecutor(threads=5) as executor:
        executor.run([group, group, group])
    assert sorted((threads, torch_threads) for _name, threads, torch_threads in seen) == [(1, 1), (2, 2), (2, 2)]
    # The caller ran one group itself (one thread hand-off fewer), then got its own count back.
    assert threading.current_thread().name in {name for name, _t, _tt in seen}
    assert torch.get_num_threads() == before


def test_a_failing_group_ends_the_stage_only_after_the_other_groups_end():
    import threading
    import time

    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.2)
        finished.set()

    def failing() -> None:
        raise RuntimeError("kernel failed")

    with CpuExecutor(threads=2) as executor, pytest.raises(RuntimeError, match="kernel failed"):
        executor.run([failing, slow])
    assert finished.is_set()  # no work of the stage outlives it


def test_an_unsupported_operator_is_refused_at_load_naming_it():
    node = onnx.helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->ij")
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                   [2, 2])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])])

    with pytest.raises(ValueError, match="'Einsum' is not supported"):
        OnnxModelProgram(onnx.helper.make_model(graph))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_scheduled_run_on_cuda_streams_equals_the_sequential_run(model):
    program = OnnxModelProgram(model, device="cuda")
    scheduled = ScheduledModel(program, schedule_with_every_stage_kind(program))
    x = torch.randn(1, 3, 12, 12)

    out = scheduled(x, executor=CudaExecutor())[0]
    torch.cuda.synchronize()

    torch.testing.assert_close(out.cpu(), program.run_sequential(x)[0].cpu(), rtol=1e-4, atol=1e-4)
