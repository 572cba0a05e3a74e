"""LiteRT (formerly TensorFlow Lite): the runtime of phones and boards, timed through its Interpreter.

``ai_edge_litert.interpreter.Interpreter`` is the drop-in successor of
``tflite_runtime`` (which does not load under numpy 2). A module is turned
into a ``.tflite`` file first, by one of two converters:

- "builtin": ``tflite_writer``, which writes the search space's ops directly as
  TFLite builtins in NHWC, as they run inside a converted network. Milliseconds
  an op, and nothing to install beyond ``ai-edge-litert``.
- "litert-torch": the general PyTorch converter (``pip install litert-torch``,
  about 1 GB with JAX and transformers, ~4 s an op; it cannot share an
  environment with this service's pins, see ``tflite_writer``). The module is
  wrapped with ``to_channel_last_io`` so that it, too, runs NHWC end to end.

"auto" (the default) uses the builtin writer for the modules it supports and
litert-torch for anything else; without litert-torch that raises
``ConverterMissing`` naming the package to install.
"""
from __future__ import annotations

import importlib.metadata
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from device_agents.profiling.backends.base import (
    BackendUnavailable,
    ConverterMissing,
    eval_mode,
    exporter_warnings_ignored,
    fixed_input,
    with_backend,
    yardstick_op,
)
from device_agents.profiling.method import MeasurementMethod, cpu_affinity, measure, measure_interleaved
from device_agents.profiling.tflite_writer import UnsupportedModule, write_tflite
from latency_db.records import MeasurementStats

CONVERTERS = ("auto", "litert-torch", "builtin")
_INSTALL_CONVERTER = "`pip install litert-torch` (the PyTorch -> LiteRT converter)"


class LiteRTBackend:
    """Times ``interpreter.invoke()`` with ``method.threads`` threads (XNNPACK, LiteRT's default CPU delegate)."""

    name = "litert"

    def __init__(self, converter: str = "auto") -> None:
        if converter not in CONVERTERS:
            raise ValueError(f"converter must be one of {', '.join(CONVERTERS)}, got {converter!r}")
        _interpreter_class()  # fail here, not in the middle of a profiling run
        self.converter = converter
        self.version = importlib.metadata.version("ai-edge-litert")
        self._yardsticks: dict[tuple[Any, ...], Any] = {}

    def convert(self, module: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> tuple[Path, str]:
        """Write the module as a ``.tflite`` file at ``path``; returns the path and the converter used."""
        path = Path(path)
        if self.converter != "litert-torch":
            try:
                write_tflite(module, input_shape, path)
                return path, "builtin"
            except UnsupportedModule as exc:
                if self.converter == "builtin":
                    raise ConverterMissing(f"{exc}. To convert any PyTorch module: {_INSTALL_CONVERTER}") from exc
        _convert_with_litert_torch(module, input_shape, path)
        return path, "litert-torch"

    def measure_tflite(self, tflite_path: str | Path, method: MeasurementMethod) -> MeasurementStats:
        """Time a ``.tflite`` file as it is: a fixed input is set once, then ``invoke()`` is timed."""
        with cpu_affinity(method.affinity):  # the interpreter's threads start pinned
            interpreter = _ready_interpreter(method, model_path=str(tflite_path))
            stats = measure(interpreter.invoke, method, yardstick=self._yardstick(method))
        return with_backend(stats, self, num_threads=method.threads)

    def open_module(
        self, module: nn.Module, input_shape: tuple[int, ...], method: MeasurementMethod
    ) -> Callable[[], object]:
        """One ``invoke()`` of the module, converted and loaded in an interpreter (call inside the pinning)."""
        with tempfile.TemporaryDirectory(prefix="automl-litert-") as tmp:
            path, _converter = self.convert(module, input_shape, Path(tmp) / "net.tflite")
            return self.open_file(path, method)

    def open_file(self, tflite_path: str | Path, method: MeasurementMethod) -> Callable[[], object]:
        """One ``invoke()`` of a ``.tflite`` file as it is; the interpreter keeps the model's bytes."""
        return _ready_interpreter(method, model_content=Path(tflite_path).read_bytes()).invoke

    def measure_runs(self, runs: list[Callable[[], object]], method: MeasurementMethod) -> list[MeasurementStats]:
        """Whole networks opened with ``open_module``/``open_file``, timed in rounds (measure_interleaved)."""
        with cpu_affinity(method.affinity):
            results = measure_interleaved(runs, method, yardstick=self._yardstick(method))
        return [with_backend(stats, self, num_threads=method.threads) for stats in results]

    def _yardstick(self, method: MeasurementMethod) -> Any:
        """The yardstick's ``invoke``, one interpreter per thread count and affinity (made inside the pinning)."""
        if not method.yardstick:
            return None
        settings = (method.threads, method.affinity)
        if settings not in self._yardsticks:
            module, input_shape = yardstick_op()
            with tempfile.TemporaryDirectory(prefix="automl-litert-") as tmp:
                path = Path(tmp) / "yardstick.tflite"
                write_tflite(module, input_shape, path)
                content = path.read_bytes()
            self._yardsticks[settings] = _ready_interpreter(method, model_content=content).invoke
        return self._yardsticks[settings]

    def measure_module(
        self, module: nn.Module, input_shape: tuple[int, ...], method: MeasurementMethod
    ) -> MeasurementStats:
        with tempfile.TemporaryDirectory(prefix="automl-litert-") as tmp:
            tflite_path, converter = self.convert(module, input_shape, Path(tmp) / "op.tflite")
            stats = self.measure_tflite(tflite_path, method)
        return with_backend(stats, self, converter=converter)


def _ready_interpreter(method: MeasurementMethod, **model: Any) -> Any:
    """An interpreter for the model (``model_path=`` or ``model_content=``), tensors allocated, fixed inputs set."""
    interpreter = _interpreter_class()(**model, num_threads=method.threads)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], fixed_input(tuple(detail["shape"]), detail["dtype"]))
    return interpreter


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise BackendUnavailable(f"the litert backend needs `pip install ai-edge-litert` ({exc})") from exc
    return Interpreter


def _convert_with_litert_torch(module: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    try:
        import litert_torch
    except ImportError as exc:
        raise ConverterMissing(
            f"converting a PyTorch module to .tflite needs litert_torch, which is not installed: {_INSTALL_CONVERTER}; "
            "or use LiteRTBackend(converter='builtin') for the search space's ops"
        ) from exc
    nchw = torch.from_numpy(fixed_input(tuple(input_shape)))
    with eval_mode(module), exporter_warnings_ignored():
        with torch.inference_mode():
            output_is_map = module(nchw).ndim == 4
        # NHWC in and out, as the op runs inside a converted network; a (N, classes) output stays as it is.
        outputs = [0] if output_is_map else None
        channel_last = litert_torch.to_channel_last_io(module, args=[0], outputs=outputs).eval()
        sample = (nchw.permute(0, 2, 3, 1).contiguous(),)
        litert_torch.convert(channel_last, sample).export(str(path))
