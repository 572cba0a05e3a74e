"""Profiling on an Android phone over adb (adb-shell), with TFLite's benchmark_model.

    from device_agents.android import AdbTarget, AndroidBackend, AndroidConfig
    from device_agents.profiling.method import MeasurementMethod

    target = AdbTarget(host="192.168.1.20")  # `adb tcpip 5555` on the phone first
    config = AndroidConfig(benchmark_binary=Path("android_aarch64_benchmark_model"))
    with AndroidBackend(target, config) as phone:
        stats = phone.measure_tflite("model.tflite", MeasurementMethod(threads=4))
"""
from device_agents.android.backend import AndroidBackend, AndroidConfig
from device_agents.android.benchmark_output import BenchmarkRun, PhaseStats, parse_benchmark_output, stats_from_run
from device_agents.android.connection import AdbConnection, AdbTarget, load_signer
from device_agents.android.errors import (
    AdbAuthRefusedError,
    AndroidBackendError,
    BenchmarkBinaryMissingError,
    BenchmarkFailedError,
    BenchmarkOutputError,
    DeviceGoneError,
    DeviceTooHotError,
    UsbUnavailableError,
)

__all__ = [
    "AdbAuthRefusedError",
    "AdbConnection",
    "AdbTarget",
    "AndroidBackend",
    "AndroidBackendError",
    "AndroidConfig",
    "BenchmarkBinaryMissingError",
    "BenchmarkFailedError",
    "BenchmarkOutputError",
    "BenchmarkRun",
    "DeviceGoneError",
    "DeviceTooHotError",
    "PhaseStats",
    "UsbUnavailableError",
    "load_signer",
    "parse_benchmark_output",
    "stats_from_run",
]
