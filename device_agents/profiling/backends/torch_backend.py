"""Eager PyTorch on the CPU or a CUDA GPU: the runtime the search itself trains and runs in."""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from device_agents.profiling.backends.base import BackendUnavailable, fixed_input, with_backend, yardstick_op
from device_agents.profiling.method import MeasurementMethod, measure, measure_interleaved
from latency_db.records import MeasurementStats

DEVICES = ("cpu", "cuda")


class TorchBackend:
    """Times ``module(x)`` under ``torch.inference_mode`` with ``method.threads`` intra-op threads.

    On CUDA each block is timed with CUDA events on the current stream and
    synchronised, so the time is the GPU's, not the launch queue's.
    """

    def __init__(self, device: str = "cpu") -> None:
        if device not in DEVICES:
            raise ValueError(f"TorchBackend device must be one of {', '.join(DEVICES)}, got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(
                "torch-cuda needs a CUDA GPU and a CUDA build of torch; torch.cuda.is_available() is False here"
            )
        self.device = device
        self.name = "torch" if device == "cpu" else "torch-cuda"
        self.version: str = torch.__version__  # a TorchVersion (a str); the protocol declares str

    def measure_module(
        self, module: nn.Module, input_shape: tuple[int, ...], method: MeasurementMethod
    ) -> MeasurementStats:
        run = self.open_module(module, input_shape, method)
        with self._running(method) as yardstick:
            if self.device == "cuda":
                stats = measure(run, method, sync=torch.cuda.synchronize, timer=_cuda_event_timer,
                                yardstick=yardstick)
            else:
                stats = measure(run, method, yardstick=yardstick)
        return with_backend(stats, self, **self._details())

    def open_module(
        self, module: nn.Module, input_shape: tuple[int, ...], method: MeasurementMethod
    ) -> Callable[[], object]:
        """One forward pass of a copy of the module (the caller's keeps its device and mode) on this
        backend's device; call it inside ``_running`` (``measure_module``, ``measure_runs`` do)."""
        model = copy.deepcopy(module).to(self.device).eval()
        x = torch.from_numpy(fixed_input(tuple(input_shape))).to(self.device)
        return lambda: model(x)

    def measure_runs(self, runs: list[Callable[[], object]], method: MeasurementMethod) -> list[MeasurementStats]:
        """Networks opened with ``open_module``, timed in rounds (measure_interleaved); on CUDA
        each block is synchronised."""
        with self._running(method) as yardstick:
            sync = torch.cuda.synchronize if self.device == "cuda" else None
            results = measure_interleaved(runs, method, sync, yardstick=yardstick)
        return [with_backend(stats, self, **self._details()) for stats in results]

    @contextlib.contextmanager
    def _running(self, method: MeasurementMethod) -> Iterator[Callable[[], object] | None]:
        """``inference_mode`` with ``method.threads`` threads (restored after); yields the yardstick
        when the method asks for one."""
        threads_before = torch.get_num_threads()
        torch.set_num_threads(method.threads)
        try:
            with torch.inference_mode():
                yield self._yardstick() if method.yardstick else None
        finally:
            torch.set_num_threads(threads_before)

    def _details(self) -> dict[str, Any]:
        if self.device == "cuda":
            return {"device": torch.cuda.get_device_name(), "cuda": torch.version.cuda}
        return {"device": "cpu"}

    def _yardstick(self) -> Callable[[], object]:
        """The yardstick's forward pass on this backend's device (call under inference_mode)."""
        if not hasattr(self, "_yardstick_run"):
            module, input_shape = yardstick_op()
            module = module.to(self.device)
            x = torch.from_numpy(fixed_input(tuple(input_shape))).to(self.device)
            self._yardstick_run: Callable[[], object] = lambda: module(x)  # noqa: E731
        return self._yardstick_run


def _cuda_event_timer(run: Callable[[], object], runs: int) -> float:
    """Milliseconds for ``runs`` calls, between two CUDA events on the current stream."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(runs):
        run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)
