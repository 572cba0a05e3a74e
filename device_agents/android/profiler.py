"""The phone as a profiler backend: convert the op to .tflite here (LiteRT's
converter), measure it on the phone with benchmark_model over adb.

Registered as backend "android", so the device agent treats a phone like any
other device: `automl agent --device pixel-7 --backend android --adb-host ...`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from device_agents.android.backend import AndroidBackend, AndroidConfig
from device_agents.android.connection import AdbTarget
from device_agents.profiling.backends.litert_backend import LiteRTBackend
from device_agents.profiling.method import MeasurementMethod
from latency_db.records import MeasurementStats


class AndroidProfilerBackend:
    name = "android"

    def __init__(self, adb_host: str | None = None, adb_port: int = 5555, adb_serial: str | None = None,
                 adb_key: str | None = None, benchmark_binary: str | None = None, **config: Any) -> None:
        if not benchmark_binary:
            raise ValueError("the android backend needs --benchmark-binary: the path of a benchmark_model built "
                             "for the phone's ABI (TensorFlow Lite's android_aarch64_benchmark_model)")
        target_options: dict[str, Any] = {"host": adb_host, "port": adb_port, "serial": adb_serial}
        if adb_key:
            target_options["key_path"] = Path(adb_key)
        self._phone = AndroidBackend(AdbTarget(**target_options), AndroidConfig(Path(benchmark_binary), **config))
        self._converter = LiteRTBackend()
        # The runtime on the phone is the benchmark_model's LiteRT; its version is the binary's, unknown here.
        self.version = ""

    def measure_module(self, module: nn.Module, input_shape: tuple[int, ...],
                       method: MeasurementMethod) -> MeasurementStats:
        with tempfile.TemporaryDirectory() as tmp:
            path, _ = self._converter.convert(module, input_shape, Path(tmp) / "op.tflite")
            return self._phone.measure_tflite(path, method)

    def close(self) -> None:
        self._phone.close()
