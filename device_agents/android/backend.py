"""Profiling TFLite models on an Android phone over adb with TFLite's ``benchmark_model``.

One measurement: push the operator-supplied ``benchmark_model`` once (then
``chmod 755``), push the model, wait until the phone is below its
temperature limit, run the tool pinned to CPUs with ``taskset`` and explicit
run counts, read its statistics (see ``benchmark_output``), remove the model.
"""
from __future__ import annotations

import hashlib
import io
import logging
import posixpath
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from adb_shell.adb_device import AdbDevice
from latency_db.records import MeasurementStats

from device_agents.android.benchmark_output import parse_benchmark_output, stats_from_run, tail_lines
from device_agents.android.connection import AdbConnection, AdbTarget
from device_agents.android.errors import (
    AndroidBackendError,
    BenchmarkBinaryMissingError,
    BenchmarkFailedError,
    BenchmarkOutputError,
    DeviceTooHotError,
)
from device_agents.profiling.method import MeasurementMethod

log = logging.getLogger("automl.agent.android")

THERMAL_COMMAND = "cat /sys/class/thermal/thermal_zone*/temp 2>/dev/null"
_EXIT_MARKER = "__automl_exit="
_EXIT_LINE = re.compile(rf"^{_EXIT_MARKER}(\d+)\s*$", re.MULTILINE)
_CPU_MASK = re.compile(r"^(0x)?[0-9a-fA-F]+$")
# Plausible temperatures; zones outside this range are unused or report junk.
_TEMPERATURE_RANGE_C = (-40.0, 150.0)
_SHELL_TIMEOUT_S = 30.0  # short housekeeping commands (chmod, cat, rm)


@dataclass(frozen=True)
class AndroidConfig:
    """What to run on the phone and under which conditions."""

    benchmark_binary: Path  # local benchmark_model built for the phone's ABI, e.g. android_aarch64_benchmark_model
    remote_dir: str = "/data/local/tmp"  # on the phone: writable and executable for adb's shell user
    cpu_mask: str = "f0"  # taskset mask (hex) when the method names no CPUs; f0 = CPUs 4-7, big cores on 4+4 SoCs
    max_temperature_c: float = 45.0  # hottest thermal zone allowed when a measurement starts
    cooldown_timeout_s: float = 300.0  # longest wait for the phone to cool below max_temperature_c
    cooldown_poll_s: float = 5.0  # pause between temperature reads while waiting
    benchmark_timeout_s: float = 600.0  # longest one benchmark_model run may take

    def __post_init__(self) -> None:
        object.__setattr__(self, "benchmark_binary", Path(self.benchmark_binary).expanduser())
        if not posixpath.isabs(self.remote_dir):
            raise ValueError(f"remote_dir must be an absolute path on the phone, got {self.remote_dir!r}")
        if not _CPU_MASK.match(self.cpu_mask) or int(self.cpu_mask, 16) == 0:
            raise ValueError(f"cpu_mask must be a non-zero hex CPU mask such as 'f0', got {self.cpu_mask!r}")
        for name in ("max_temperature_c", "cooldown_timeout_s", "cooldown_poll_s", "benchmark_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")


class AndroidBackend:
    """Measures ``.tflite`` models on one phone; use as a context manager or call `close()`."""

    name = "litert"  # the runtime benchmark_model measures

    def __init__(self, target: AdbTarget, config: AndroidConfig) -> None:
        self.target = target
        self.config = config
        self.connection = AdbConnection(target)
        self._pushed_binary: tuple[int, int] | None = None  # (size, mtime_ns) of the local file last pushed

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> AndroidBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def remote_binary(self) -> str:
        return posixpath.join(self.config.remote_dir, "benchmark_model")

    def measure_tflite(self, local_path: Path | str, method: MeasurementMethod | None = None) -> MeasurementStats:
        """Statistics of the model's inference on the phone, in milliseconds.

        ``method.threads`` -> ``--num_threads``; ``method.warmup`` ->
        ``--warmup_runs``; the timed runs are ``block_size * min_blocks`` single
        runs (benchmark_model times each run; blocks and ``cv_threshold`` do
        not apply); ``method.affinity`` (CPU numbers on the phone) becomes the
        taskset mask, else ``config.cpu_mask``; ``method.cooldown_s`` is a
        pause before the temperature check. ``temperature_c`` is read after
        the run. See ``stats_from_run`` for which printed number fills which field.
        """
        method = method if method is not None else MeasurementMethod()
        model_bytes = _read_model(Path(local_path))
        self._ensure_binary()
        remote_model = posixpath.join(
            self.config.remote_dir, f"automl_{hashlib.sha256(model_bytes).hexdigest()[:16]}.tflite"
        )
        self._push(model_bytes, remote_model)
        try:
            if method.cooldown_s > 0:
                time.sleep(method.cooldown_s)
            start_temperature, waited_s = self.wait_until_cool()
            runs = method.block_size * method.min_blocks
            mask = _affinity_mask(method.affinity) if method.affinity is not None else self.config.cpu_mask
            output = self._run_benchmark(remote_model, method.threads, method.warmup, runs, mask)
        finally:
            self._remove_quietly(remote_model)
        end_temperature = self.read_temperature_c()
        recorded = {
            **method.to_dict(),
            "tool": "benchmark_model",
            "device": self.target.address,
            "num_threads": method.threads,
            "warmup_runs": method.warmup,
            "num_runs": runs,
            "taskset": True,
            "cpu_mask": f"0x{int(mask, 16):x}",
            "use_gpu": False,
            "temperature_start_c": start_temperature,
            "cooldown_waited_s": round(waited_s, 3),
        }
        return stats_from_run(parse_benchmark_output(output), method.warmup, recorded, end_temperature)

    # -- temperature --------------------------------------------------------
    def read_temperature_c(self) -> float | None:
        """The hottest plausible thermal zone in °C; None where the phone lets none be read."""
        text = self._shell(THERMAL_COMMAND, "read the thermal zones")
        readings = []
        for token in text.split():
            try:
                value = float(token)
            except ValueError:
                continue
            # Most kernels report millidegrees; a few report whole degrees.
            celsius = value / 1000 if abs(value) > 200 else value
            if _TEMPERATURE_RANGE_C[0] <= celsius <= _TEMPERATURE_RANGE_C[1]:
                readings.append(celsius)
        return max(readings) if readings else None

    def wait_until_cool(self) -> tuple[float | None, float]:
        """Poll until the phone is at most ``max_temperature_c``; returns (that
        temperature, seconds waited). DeviceTooHotError after ``cooldown_timeout_s``."""
        started = time.monotonic()
        temperature = self.read_temperature_c()
        if temperature is None:
            log.warning("%s: no readable thermal zone; measuring without a cool-down check", self.target.address)
        while temperature is not None and temperature > self.config.max_temperature_c:
            waited = time.monotonic() - started
            if waited >= self.config.cooldown_timeout_s:
                raise DeviceTooHotError(
                    f"the phone at {self.target.address} is still at {temperature:.1f} °C after {waited:.0f} s, "
                    f"above max_temperature_c={self.config.max_temperature_c:g}: take it off the charger, out "
                    "of its case and the sun, stop other work on it, or raise cooldown_timeout_s"
                )
            log.info("%s: %.1f °C > %g °C, cooling down", self.target.address, temperature,
                     self.config.max_temperature_c)
            time.sleep(min(self.config.cooldown_poll_s, self.config.cooldown_timeout_s - waited))
            temperature = self.read_temperature_c()
        return temperature, time.monotonic() - started

    # -- steps --------------------------------------------------------------
    def _shell(self, command: str, what: str, timeout_s: float = _SHELL_TIMEOUT_S) -> str:
        def run(device: AdbDevice) -> str:
            return device.shell(command, transport_timeout_s=timeout_s, read_timeout_s=timeout_s, timeout_s=timeout_s)

        return self.connection.call(run, what)

    def _push(self, content: bytes, remote_path: str) -> None:
        # From memory: every push attempt reads from the start, and no local
        # file error can pass for a transport error.
        self.connection.call(lambda device: device.push(io.BytesIO(content), remote_path), f"push {remote_path}")

    def _ensure_binary(self) -> None:
        local = self.config.benchmark_binary
        if not local.is_file():
            raise BenchmarkBinaryMissingError(
                f"benchmark_model not found at {local}: download TFLite's prebuilt "
                "android_aarch64_benchmark_model (or build //tensorflow/lite/tools/benchmark:benchmark_model "
                "with --config=android_arm64) and set benchmark_binary to its path"
            )
        stat = local.stat()
        signature = (stat.st_size, stat.st_mtime_ns)
        if self._pushed_binary == signature:
            return
        self._push(local.read_bytes(), self.remote_binary)
        self._shell(f"chmod 755 {shlex.quote(self.remote_binary)}", "chmod the benchmark binary")
        self._pushed_binary = signature

    def _run_benchmark(self, remote_model: str, threads: int, warmup: int, runs: int, mask: str) -> str:
        arguments = [
            "taskset", mask, self.remote_binary,
            f"--graph={remote_model}",
            f"--num_threads={threads}",
            f"--warmup_runs={warmup}",
            "--warmup_min_secs=0",  # exactly `warmup` warm-up runs, not "at least 0.5 s"
            f"--num_runs={runs}",
            "--min_secs=0",  # exactly `runs` timed runs, not "at least 1 s"
            "--use_gpu=false",
        ]
        # The shell service has no exit status: echo it after the command.
        command = " ".join(shlex.quote(a) for a in arguments) + f"; echo {_EXIT_MARKER}$?"
        log.info("%s: %s", self.target.address, command)
        output = self._shell(command, "run benchmark_model", timeout_s=self.config.benchmark_timeout_s)
        statuses = _EXIT_LINE.findall(output)
        if not statuses:
            raise BenchmarkOutputError(
                f"benchmark_model's run on {self.target.address} ended without an exit status; output:\n"
                f"{tail_lines(output)}"
            )
        status = int(statuses[-1])
        output = _EXIT_LINE.sub("", output)
        if status in (126, 127):  # the shell's "not found" / "cannot execute"
            self._pushed_binary = None  # push it again next time
            raise BenchmarkBinaryMissingError(
                f"the phone at {self.target.address} could not execute {self.remote_binary} (exit {status}): "
                f"{tail_lines(output, 3)}. It is pushed again on the next measurement; if this repeats, check that "
                f"{self.config.benchmark_binary} is built for the phone's ABI (`adb shell getprop "
                f"ro.product.cpu.abi`) and that {self.config.remote_dir} allows execution"
            )
        if status != 0:
            raise BenchmarkFailedError(
                f"benchmark_model exited with status {status} on {self.target.address}; end of its output:\n"
                f"{tail_lines(output)}"
            )
        return output

    def _remove_quietly(self, remote_path: str) -> None:
        try:
            self._shell(f"rm -f {shlex.quote(remote_path)}", f"remove {remote_path}")
        except AndroidBackendError as exc:
            log.warning("%s: could not remove %s: %s", self.target.address, remote_path, exc)


def _read_model(path: Path) -> bytes:
    if path.suffix != ".tflite":
        raise ValueError(f"expected a .tflite model file, got {path}")
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    return path.read_bytes()


def _affinity_mask(cpus: tuple[int, ...]) -> str:
    """The hex taskset mask of CPU numbers, e.g. (4, 5, 6, 7) -> 'f0'."""
    return f"{sum(1 << cpu for cpu in cpus):x}"
