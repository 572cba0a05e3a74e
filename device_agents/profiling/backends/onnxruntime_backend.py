"""ONNX Runtime: the module is exported to ONNX, then timed in an InferenceSession."""
from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from device_agents.profiling.backends.base import (
    BackendUnavailable,
    eval_mode,
    exporter_warnings_ignored,
    fixed_input,
    with_backend,
    yardstick_op,
)
from device_agents.profiling.method import MeasurementMethod, cpu_affinity, measure, measure_interleaved
from latency_db.records import MeasurementStats

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# "torchscript": torch.onnx.export(dynamo=False). Deprecated in torch 2.9 but the better tool for
# profiling: ~0.6 s an op against ~3.5 s for the torch.export-based exporter, it writes the
# requested opset as is (the other one writes 18 and converts down), and it needs only `onnx`.
# "dynamo": the torch.export-based exporter (needs `onnxscript`); the way forward once the
# TorchScript exporter is removed.
EXPORTERS = ("torchscript", "dynamo")
_EXPORTER_PACKAGES = {"torchscript": ("onnx",), "dynamo": ("onnx", "onnxscript")}
DEFAULT_OPSET = 17
_ONNX_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


class OnnxRuntimeBackend:
    """Times ``session.run`` of the exported op; ``method.threads`` intra-op threads, one inter-op thread.

    Graph optimisation is ORT_ENABLE_ALL (what a deployment would use: BN is
    folded, activations fused). With the CUDA provider the input and output
    stay on the GPU (IO binding), so the time is the op's, not the copies'.
    """

    name = "onnxruntime"

    def __init__(self, provider: str = CPU, *, exporter: str = "torchscript", opset: int = DEFAULT_OPSET) -> None:
        ort = _import_onnxruntime()
        available = ort.get_available_providers()
        if provider not in available:
            hint = " (install onnxruntime-gpu on a CUDA machine)" if provider == CUDA else ""
            raise BackendUnavailable(
                f"ONNX Runtime provider {provider!r} is not available here{hint}; available: {', '.join(available)}"
            )
        if exporter not in EXPORTERS:
            raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
        if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
            raise ValueError(f"opset must be an integer >= 13, got {opset!r}")
        self.provider, self.exporter, self.opset = provider, exporter, opset
        self.version = ort.__version__
        self._yardsticks: dict[tuple[Any, ...], Callable[[], object]] = {}

    def export(self, module: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
        """Write the module (eval mode, float32 input of ``input_shape``) as an ONNX file at ``path``."""
        missing = [name for name in _EXPORTER_PACKAGES[self.exporter] if importlib.util.find_spec(name) is None]
        if missing:
            raise BackendUnavailable(
                f"exporting to ONNX with the {self.exporter} exporter needs `pip install {' '.join(missing)}`"
            )
        path = Path(path)
        example = (torch.from_numpy(fixed_input(tuple(input_shape))),)
        with eval_mode(module), exporter_warnings_ignored():
            if self.exporter == "torchscript":
                torch.onnx.export(
                    module, example, str(path), dynamo=False, opset_version=self.opset,
                    input_names=["input"], output_names=["output"],
                )
            else:
                torch.onnx.export(
                    module, example, str(path), dynamo=True, opset_version=self.opset,
                    input_names=["input"], output_names=["output"], external_data=False, verbose=False,
                )
        return path

    def create_session(self, onnx_path: str | Path, method: MeasurementMethod) -> Any:
        """An InferenceSession for the file with this backend's provider and the method's threads."""
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = method.threads
        options.inter_op_num_threads = 1  # one op at a time: the ops measured are chains
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: the per-session info lines are noise here
        return ort.InferenceSession(str(onnx_path), options, providers=[self.provider])

    def measure_onnx(self, onnx_path: str | Path, method: MeasurementMethod) -> MeasurementStats:
        """Time an ONNX file as it is (e.g. an exported network); symbolic dimensions are run as 1."""
        # The session's thread pool is made now: pin first, so that its threads start pinned.
        with cpu_affinity(method.affinity):
            session = self.create_session(onnx_path, method)
            run = self._runner(session)
            stats = measure(run, method, yardstick=self._yardstick(method))
        return with_backend(stats, self, **self._session_details(session.get_session_options().intra_op_num_threads))

    def open_module(
        self, module: nn.Module, input_shape: tuple[int, ...], method: MeasurementMethod
    ) -> Callable[[], object]:
        """One inference of the module, exported and loaded in a session (call inside the method's pinning)."""
        with tempfile.TemporaryDirectory(prefix="automl-ort-") as tmp:
            # The session holds the model in memory; the file can go.
            return self.open_file(self.export(module, input_shape, Path(tmp) / "net.onnx"), method)

    def open_file(self, onnx_path: str | Path, method: MeasurementMethod) -> Callable[[], object]:
        """One inference of an ONNX file as it is (symbolic dimensions run as 1)."""
        return self._runner(self.create_session(onnx_path, method))

    def measure_runs(self, runs: list[Callable[[], object]], method: MeasurementMethod) -> list[MeasurementStats]:
        """Whole networks opened with ``open_module``/``open_file``, timed in rounds (measure_interleaved)."""
        with cpu_affinity(method.affinity):
            results = measure_interleaved(runs, method, yardstick=self._yardstick(method))
        details = {**self._session_details(method.threads), "exporter": self.exporter, "opset": self.opset}
        return [with_backend(stats, self, **details) for stats in results]

    def _session_details(self, intra_op_threads: int) -> dict[str, Any]:
        """How ``create_session`` runs a model, recorded beside each result."""
        return {"provider": self.provider, "intra_op_num_threads": intra_op_threads, "inter_op_num_threads": 1,
                "graph_optimization": "ORT_ENABLE_ALL"}

    def measure_module(
        self, module: nn.Module, input_shape: tuple[int, ...], method: MeasurementMethod
    ) -> MeasurementStats:
        with tempfile.TemporaryDirectory(prefix="automl-ort-") as tmp:
            onnx_path = self.export(module, input_shape, Path(tmp) / "op.onnx")
            stats = self.measure_onnx(onnx_path, method)
        return with_backend(stats, self, exporter=self.exporter, opset=self.opset)

    def _yardstick(self, method: MeasurementMethod) -> Callable[[], object] | None:
        """The yardstick's session run, made once per thread count and affinity (inside the caller's pinning)."""
        if not method.yardstick:
            return None
        settings = (method.threads, method.affinity)
        if settings not in self._yardsticks:
            module, input_shape = yardstick_op()
            with tempfile.TemporaryDirectory(prefix="automl-ort-") as tmp:
                # The session holds the model in memory; the file can go.
                session = self.create_session(self.export(module, input_shape, Path(tmp) / "yardstick.onnx"), method)
            self._yardsticks[settings] = self._runner(session)
        return self._yardsticks[settings]

    def _runner(self, session: Any) -> Callable[[], object]:
        feeds = {}
        for arg in session.get_inputs():
            if arg.type not in _ONNX_TYPES:
                raise ValueError(f"input {arg.name!r} has type {arg.type}; accepted: {', '.join(_ONNX_TYPES)}")
            shape = tuple(dim if isinstance(dim, int) and dim > 0 else 1 for dim in arg.shape)
            feeds[arg.name] = fixed_input(shape, _ONNX_TYPES[arg.type])
        if self.provider != CUDA:
            return lambda: session.run(None, feeds)
        ort = _import_onnxruntime()
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
        for output in session.get_outputs():
            binding.bind_output(output.name, "cuda")
        return lambda: session.run_with_iobinding(binding)


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(f"the onnxruntime backend needs `pip install onnxruntime` ({exc})") from exc
    return onnxruntime

