"""Profiler backends: each measures a real op on its runtime and records how it did.

Timings are asserted only loosely (positive, same order of magnitude, within
50% run to run); the tight figures are in bench/bench_profiling.py.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import replace

import pytest
import torch

from device_agents.profiling import (
    BackendUnavailable,
    MeasurementMethod,
    OnnxRuntimeBackend,
    ProfilerBackend,
    TorchBackend,
    backend_names,
    build_from_key,
    get_backend,
    profile_key,
)
from device_agents.profiling.backends.base import YARDSTICK_KEY

MBCONV_KEY = "expanded_conv-input:16x16x24-output:8x8x40-expand:6-kernel:5-stride:2-idskip:0"
QUICK = MeasurementMethod(warmup=3, block_size=5, min_blocks=3, max_blocks=6, cv_threshold=0.1)
CPU_BACKENDS = ("torch", "onnxruntime", "litert")


def _ort_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def test_the_registry_knows_every_backend() -> None:
    assert {"torch", "torch-cuda", "onnxruntime", "litert"} <= set(backend_names())


def test_an_unknown_backend_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(ValueError) as excinfo:
        get_backend("tensorrt")

    assert "'tensorrt'" in str(excinfo.value) and "onnxruntime" in str(excinfo.value)


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_each_backend_measures_an_mbconv_and_records_its_method(name: str) -> None:
    backend = get_backend(name)

    stats = profile_key(backend, MBCONV_KEY, QUICK)

    assert isinstance(backend, ProfilerBackend)
    assert stats.median_ms > 0 and stats.min_ms > 0
    assert stats.method["backend"] == name == backend.name
    assert stats.method["backend_version"] == backend.version != ""
    assert stats.method["threads"] == 1 and stats.method["warmup"] == 3
    assert 3 <= stats.method["blocks"] <= 6 and isinstance(stats.method["converged"], bool)
    assert stats.method["block_runs"] >= 5  # grown for a fast op to last min_block_ms
    assert stats.samples == stats.method["blocks"] * stats.method["block_runs"]
    # Paired with the backend's yardstick, run in the same runtime.
    assert stats.method["yardstick"] is True and stats.method["yardstick_key"] == YARDSTICK_KEY
    assert stats.method["yardstick_ms"] > 0 and stats.method["raw_median_ms"] > 0
    assert stats.method["yardstick_runs"] >= 5


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_each_backend_can_measure_without_the_yardstick(name: str) -> None:
    stats = profile_key(get_backend(name), MBCONV_KEY, replace(QUICK, yardstick=False))

    assert stats.median_ms > 0
    assert stats.method["yardstick"] is False
    assert "yardstick_ms" not in stats.method and "yardstick_key" not in stats.method


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_backends_leave_the_module_as_it_was(name: str) -> None:
    module, input_shape = build_from_key(MBCONV_KEY)
    module.train()
    weights = {k: v.clone() for k, v in module.state_dict().items()}

    get_backend(name).measure_module(module, input_shape, QUICK)

    assert all(layer.training for layer in module.modules())
    assert all(torch.equal(weights[k], v) for k, v in module.state_dict().items())


def test_torch_backend_restores_the_thread_count() -> None:
    module, input_shape = build_from_key(MBCONV_KEY)
    threads_before = torch.get_num_threads()

    stats = TorchBackend().measure_module(module, input_shape, replace(QUICK, threads=2))

    assert stats.method["threads"] == 2
    assert torch.get_num_threads() == threads_before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here (torch.cuda.is_available() is False)")
def test_torch_cuda_backend_times_with_cuda_events() -> None:
    backend = get_backend("torch-cuda")

    stats = profile_key(backend, MBCONV_KEY, QUICK)

    assert stats.median_ms > 0
    assert stats.method["backend"] == "torch-cuda" and stats.method["device"] == torch.cuda.get_device_name()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_torch_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(BackendUnavailable, match="CUDA"):
        get_backend("torch-cuda")


def test_onnxruntime_sessions_run_the_methods_thread_count(tmp_path: os.PathLike[str]) -> None:
    backend = OnnxRuntimeBackend()
    module, input_shape = build_from_key(MBCONV_KEY)
    onnx_path = backend.export(module, input_shape, os.path.join(tmp_path, "op.onnx"))
    worker_threads = {}

    sessions = []
    for threads in (1, 3):
        before = len(os.listdir("/proc/self/task"))
        session = backend.create_session(onnx_path, MeasurementMethod(threads=threads))
        sessions.append(session)  # kept alive so its pool is still there while counting
        worker_threads[threads] = len(os.listdir("/proc/self/task")) - before
        assert session.get_session_options().intra_op_num_threads == threads
        assert session.get_session_options().inter_op_num_threads == 1

    # The intra-op pool holds threads - 1 workers: the calling thread is the other one.
    assert worker_threads == {1: 0, 3: 2}


def test_onnxruntime_records_the_threads_and_export_it_used() -> None:
    stats = profile_key(get_backend("onnxruntime"), MBCONV_KEY, replace(QUICK, threads=2))

    assert stats.method["intra_op_num_threads"] == 2 and stats.method["threads"] == 2
    assert stats.method["provider"] == "CPUExecutionProvider"
    assert stats.method["exporter"] == "torchscript" and stats.method["opset"] == 17
    assert stats.method["graph_optimization"] == "ORT_ENABLE_ALL"


def test_onnxruntime_refuses_a_provider_it_does_not_have_listing_those_it_has() -> None:
    if "CUDAExecutionProvider" in _ort_providers():
        pytest.skip("this onnxruntime has the CUDA provider")

    with pytest.raises(BackendUnavailable) as excinfo:
        get_backend("onnxruntime", provider="CUDAExecutionProvider")

    assert "CPUExecutionProvider" in str(excinfo.value) and "onnxruntime-gpu" in str(excinfo.value)


def test_onnxruntime_cuda_provider_measures_an_op() -> None:
    if "CUDAExecutionProvider" not in _ort_providers() or not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and onnxruntime-gpu (CUDAExecutionProvider is not available here)")

    stats = profile_key(get_backend("onnxruntime", provider="CUDAExecutionProvider"), MBCONV_KEY, QUICK)

    assert stats.median_ms > 0 and stats.method["provider"] == "CUDAExecutionProvider"


def test_onnxruntime_dynamo_exporter_gives_a_measurable_op() -> None:
    if importlib.util.find_spec("onnxscript") is None:
        pytest.skip("the dynamo exporter needs onnxscript")

    backend = get_backend("onnxruntime", exporter="dynamo", opset=18)

    stats = profile_key(backend, "Conv_1-input:4x4x8-output:4x4x16", QUICK)

    assert stats.median_ms > 0 and stats.method["exporter"] == "dynamo"


def test_affinity_is_applied_through_a_backend() -> None:
    cpu = sorted(os.sched_getaffinity(0))[0]
    allowed = os.sched_getaffinity(0)

    stats = profile_key(get_backend("onnxruntime"), MBCONV_KEY, replace(QUICK, affinity=(cpu,)))

    assert stats.method["affinity"] == [cpu]
    assert os.sched_getaffinity(0) == allowed
