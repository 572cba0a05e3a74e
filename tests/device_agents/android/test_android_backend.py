"""The Android backend end to end against an ADB peer standing in for the phone:
real adb-shell client, real RSA authentication, real pushes over the sync
protocol, a real (stand-in) benchmark_model timing a real TFLite model."""
from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import adb_shell.adb_device
import numpy as np
import pytest
from adb_shell.auth.keygen import keygen
from ai_edge_litert.interpreter import Interpreter

from device_agents.android import (
    AdbAuthRefusedError,
    AdbTarget,
    AndroidBackend,
    AndroidConfig,
    BenchmarkBinaryMissingError,
    BenchmarkFailedError,
    BenchmarkOutputError,
    DeviceGoneError,
    DeviceTooHotError,
    UsbUnavailableError,
    parse_benchmark_output,
    stats_from_run,
)
from device_agents.profiling.method import MeasurementMethod
from tests.device_agents.android.adb_peer import AdbPeer
from tests.device_agents.android.fake_benchmark_model import install_benchmark_model
from tests.device_agents.android.tiny_model import dense_model_bytes, write_dense_model

# The "phone" is this host: pin to a CPU this process may use.
HOST_CPU = min(os.sched_getaffinity(0))
HOST_MASK = f"{1 << HOST_CPU:x}"
METHOD = MeasurementMethod(threads=2, warmup=3, block_size=5, min_blocks=4)  # 20 timed runs


@pytest.fixture(scope="module")
def adb_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key_path = tmp_path_factory.mktemp("adb") / "adbkey"
    keygen(str(key_path))
    return key_path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dense_model(tmp_path_factory.mktemp("model") / "mlp.tflite")


@pytest.fixture(scope="module")
def benchmark_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_benchmark_model(tmp_path_factory.mktemp("tools") / "benchmark_model")


@pytest.fixture
def peer(tmp_path: Path, adb_key: Path) -> Iterator[AdbPeer]:
    public_key = Path(f"{adb_key}.pub").read_text()
    with AdbPeer(tmp_path / "phone", trusted_keys=[public_key]) as device:
        yield device


def make_target(port: int, key_path: Path, **overrides: Any) -> AdbTarget:
    settings: dict[str, Any] = dict(
        host="127.0.0.1", port=port, key_path=key_path, transport_timeout_s=5.0, auth_timeout_s=0.5,
        attempts=3, retry_backoff_s=0.02,
    )
    settings.update(overrides)
    return AdbTarget(**settings)


@pytest.fixture
def make_backend(
    peer: AdbPeer, adb_key: Path, benchmark_binary: Path
) -> Iterator[Callable[..., AndroidBackend]]:
    backends: list[AndroidBackend] = []

    def make(target: AdbTarget | None = None, **config: Any) -> AndroidBackend:
        settings: dict[str, Any] = dict(benchmark_binary=benchmark_binary, cpu_mask=HOST_MASK,
                                           cooldown_poll_s=0.05)
        settings.update(config)
        backend = AndroidBackend(target or make_target(peer.port, adb_key), AndroidConfig(**settings))
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        backend.close()


def write_script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


# -- end to end ----------------------------------------------------------------

def test_measures_a_model_on_the_phone(make_backend, peer: AdbPeer, model_path: Path) -> None:
    backend = make_backend()

    first = backend.measure_tflite(model_path, METHOD)
    second = backend.measure_tflite(model_path, METHOD)

    assert first.median_ms > 0 and first.mean_ms > 0
    assert first.min_ms <= first.median_ms <= first.p90_ms
    assert (first.samples, first.warmup) == (20, 3)
    assert first.method["num_threads"] == 2
    assert (first.method["warmup_runs"], first.method["num_runs"]) == (3, 20)
    assert first.method["taskset"] is True and first.method["cpu_mask"] == f"0x{HOST_MASK}"
    assert first.method["median_from"] == "median"
    assert first.temperature_c == pytest.approx(35.0)
    assert second.samples == 20
    # Signed with a trusted key: no public key was offered, no prompt shown.
    assert peer.offered_keys == []
    runs = [c for c in peer.shell_commands if "benchmark_model --graph=" in c]
    assert len(runs) == 2
    assert runs[0].startswith(f"taskset {HOST_MASK} /data/local/tmp/benchmark_model --graph=/data/local/tmp/")
    for flag in ("--num_threads=2", "--warmup_runs=3", "--num_runs=20", "--min_secs=0", "--use_gpu=false"):
        assert flag in runs[0]
    # The binary went over once, executable; the model is removed after each run.
    assert [c for c in peer.shell_commands if c.startswith("chmod")] == ["chmod 755 /data/local/tmp/benchmark_model"]
    assert os.access(peer.host_path("/data/local/tmp/benchmark_model"), os.X_OK)
    assert not list(peer.host_path("/data/local/tmp").glob("*.tflite"))


def test_affinity_of_the_method_becomes_the_taskset_mask(make_backend, peer: AdbPeer, model_path: Path) -> None:
    backend = make_backend(cpu_mask="1")
    method = MeasurementMethod(threads=1, warmup=1, block_size=2, min_blocks=2, affinity=(HOST_CPU,))

    stats = backend.measure_tflite(model_path, method)

    assert stats.method["affinity"] == [HOST_CPU]
    assert stats.method["cpu_mask"] == f"0x{HOST_MASK}"
    assert any(c.startswith(f"taskset {HOST_MASK} ") for c in peer.shell_commands)


# -- authentication -------------------------------------------------------------

def test_untrusted_key_is_refused_with_what_to_do(tmp_path: Path, adb_key: Path, benchmark_binary: Path) -> None:
    with AdbPeer(tmp_path / "phone", trusted_keys=[], accept_new_keys=False) as phone:
        backend = AndroidBackend(make_target(phone.port, adb_key), AndroidConfig(benchmark_binary, cpu_mask=HOST_MASK))

        with pytest.raises(AdbAuthRefusedError, match="accept the RSA key prompt on the phone"):
            backend.read_temperature_c()

        backend.close()
        assert phone.offered_keys == [Path(f"{adb_key}.pub").read_text().strip()]
        assert phone.connections == 1  # a refusal is not retried


def test_new_key_is_generated_and_accepted_when_the_user_allows(tmp_path: Path, benchmark_binary: Path) -> None:
    key_path = tmp_path / "keys" / "adbkey"  # does not exist yet
    with AdbPeer(tmp_path / "phone", trusted_keys=[], accept_new_keys=True) as phone:
        backend = AndroidBackend(make_target(phone.port, key_path), AndroidConfig(benchmark_binary, cpu_mask=HOST_MASK))

        temperature = backend.read_temperature_c()

        backend.close()
        assert temperature == pytest.approx(35.0)
        assert key_path.is_file() and Path(f"{key_path}.pub").is_file()
        assert oct(key_path.stat().st_mode & 0o777) == "0o600"
        assert phone.trusted_keys == [Path(f"{key_path}.pub").read_text().strip()]


# -- transport ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_closed_port_means_device_gone(adb_key: Path, benchmark_binary: Path) -> None:
    port = free_port()
    backend = AndroidBackend(make_target(port, adb_key, attempts=2), AndroidConfig(benchmark_binary))

    with pytest.raises(DeviceGoneError, match=f"127.0.0.1:{port}.*ConnectionRefusedError"):
        backend.read_temperature_c()


def test_dropped_connection_is_retried(make_backend, peer: AdbPeer) -> None:
    peer.drop_connections = 1
    backend = make_backend()

    temperature = backend.read_temperature_c()

    assert temperature == pytest.approx(35.0)
    assert peer.connections == 2


def test_connection_dropped_every_time_means_device_gone(make_backend, peer: AdbPeer, adb_key: Path) -> None:
    peer.drop_connections = 10
    backend = make_backend(make_target(peer.port, adb_key, attempts=3))

    with pytest.raises(DeviceGoneError, match="after 3 attempt"):
        backend.read_temperature_c()
    assert peer.connections == 3


def test_usb_without_libusb_is_a_clear_error(monkeypatch, adb_key: Path, benchmark_binary: Path) -> None:
    monkeypatch.setattr(adb_shell.adb_device, "UsbTransport", None)  # as when libusb1 is not installed
    backend = AndroidBackend(AdbTarget(serial="R58M123ABC", key_path=adb_key), AndroidConfig(benchmark_binary))

    with pytest.raises(UsbUnavailableError, match=r"adb-shell\[usb\].*adb tcpip 5555"):
        backend.read_temperature_c()


# -- the benchmark binary ---------------------------------------------------------

def test_missing_local_binary_fails_before_connecting(make_backend, peer: AdbPeer, tmp_path: Path,
                                                      model_path: Path) -> None:
    backend = make_backend(benchmark_binary=tmp_path / "no_such_benchmark_model")

    with pytest.raises(BenchmarkBinaryMissingError, match="no_such_benchmark_model.*set benchmark_binary"):
        backend.measure_tflite(model_path, METHOD)
    assert peer.connections == 0


def test_binary_gone_from_the_phone_is_reported_then_pushed_again(make_backend, peer: AdbPeer,
                                                                  model_path: Path) -> None:
    backend = make_backend()
    method = MeasurementMethod(threads=1, warmup=1, block_size=2, min_blocks=2)
    backend.measure_tflite(model_path, method)
    peer.host_path("/data/local/tmp/benchmark_model").unlink()  # e.g. /data/local/tmp was cleared

    with pytest.raises(BenchmarkBinaryMissingError, match="could not execute /data/local/tmp/benchmark_model"):
        backend.measure_tflite(model_path, method)
    stats = backend.measure_tflite(model_path, method)

    assert stats.samples == 4


def test_output_without_statistics_is_unparsable(make_backend, tmp_path: Path, model_path: Path) -> None:
    binary = write_script(tmp_path / "benchmark_model", 'echo "Segmentation fault"')
    backend = make_backend(benchmark_binary=binary)

    with pytest.raises(BenchmarkOutputError, match="(?s)no 'count=.*Segmentation fault"):
        backend.measure_tflite(model_path, METHOD)


def test_failing_benchmark_reports_its_output(make_backend, tmp_path: Path, model_path: Path) -> None:
    binary = write_script(tmp_path / "benchmark_model", 'echo "ERROR: Failed to apply delegate"; exit 1')
    backend = make_backend(benchmark_binary=binary)

    with pytest.raises(BenchmarkFailedError, match="(?s)status 1.*Failed to apply delegate"):
        backend.measure_tflite(model_path, METHOD)


# -- temperature ------------------------------------------------------------------

def test_waits_for_the_phone_to_cool_down(make_backend, peer: AdbPeer, model_path: Path) -> None:
    peer.set_temperature(60.0)
    backend = make_backend(max_temperature_c=45.0, cooldown_timeout_s=20.0)
    thermal_reads = lambda: sum("thermal_zone" in c for c in peer.shell_commands)  # noqa: E731

    def cool_after_three_reads() -> None:
        while thermal_reads() < 3:
            time.sleep(0.01)
        peer.set_temperature(40.0)

    cooling = threading.Thread(target=cool_after_three_reads, daemon=True)
    cooling.start()

    stats = backend.measure_tflite(model_path, MeasurementMethod(threads=1, warmup=1, block_size=2, min_blocks=2))

    cooling.join(timeout=5)
    run_index = next(i for i, c in enumerate(peer.shell_commands) if "--graph=" in c)
    assert sum("thermal_zone" in c for c in peer.shell_commands[:run_index]) >= 3  # polled while hot
    assert stats.method["cooldown_waited_s"] > 0
    assert stats.method["temperature_start_c"] == pytest.approx(40.0)
    assert stats.temperature_c == pytest.approx(40.0)


def test_a_phone_that_stays_hot_times_out(make_backend, peer: AdbPeer, model_path: Path) -> None:
    peer.set_temperature(80.0)
    backend = make_backend(max_temperature_c=45.0, cooldown_timeout_s=0.3)

    with pytest.raises(DeviceTooHotError, match="80.0 °C.*max_temperature_c=45"):
        backend.measure_tflite(model_path, METHOD)
    assert not [c for c in peer.shell_commands if "--graph=" in c]
    assert not list(peer.host_path("/data/local/tmp").glob("*.tflite"))


# -- parsing captured output -------------------------------------------------------

# As printed by an older benchmark_model build on a phone (no percentiles).
CAPTURED_OLD = """\
STARTING!
Log parameter values verbosely: [0]
Min num runs: [50]
Min runs duration (seconds): [0]
Num threads: [4]
Min warmup runs: [5]
Min warmup runs duration (seconds): [0]
Graph: [/data/local/tmp/mobilenet_v2_1.0_224.tflite]
#threads used for CPU inference: [4]
Loaded model /data/local/tmp/mobilenet_v2_1.0_224.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
The input model file size (MB): 13.9786
Initialized session in 41.73ms.
Running benchmark for at least 5 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
count=5 first=31877 curr=14265 min=14180 max=31877 avg=17843.6 std=7049

Running benchmark for at least 50 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
count=50 first=14322 curr=13987 min=13804 max=16230 avg=14211.5 std=412

Inference timings in us: Init: 41730, First inference: 31877, Warmup (avg): 17843.6, Inference (avg): 14211.5
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
Memory footprint delta from the start of the tool (MB): init=6.10938 overall=29.4766
"""

# A newer build through logcat-style prefixes, with percentiles and %g averages.
CAPTURED_NEW = """\
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=4 first=1302114 curr=1251380 min=1249950 max=1302114 avg=1.26377e+06 std=21720 p5=1249950 median=1251380 p95=1302114

INFO: Running benchmark for at least 20 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=20 first=1250871 curr=1248802 min=1246390 max=1271043 avg=1.25092e+06 std=5211 p5=1246519 median=1249706 p95=1262288

INFO: Inference timings in us: Init: 6083, First inference: 1302114, Warmup (avg): 1.26377e+06, Inference (avg): 1.25092e+06
"""


def test_parses_a_captured_output_without_percentiles() -> None:
    stats = stats_from_run(parse_benchmark_output(CAPTURED_OLD), warmup_requested=5, method={"num_threads": 4})

    assert (stats.samples, stats.warmup) == (50, 5)
    assert stats.mean_ms == pytest.approx(14.2115)
    assert stats.median_ms == pytest.approx(14.2115)  # no median printed: the average stands in
    assert stats.method["median_from"].startswith("avg")
    assert stats.std_ms == pytest.approx(0.412)
    assert stats.min_ms == pytest.approx(13.804)
    assert stats.p90_ms == pytest.approx(14.2115 + 1.2815516 * 0.412)
    assert stats.cv == pytest.approx(412 / 14211.5)
    assert stats.method["init_ms"] == pytest.approx(41.73)
    assert stats.method["first_inference_ms"] == pytest.approx(31.877)
    assert stats.method["max_ms"] == pytest.approx(16.23)


def test_parses_a_captured_output_with_percentiles() -> None:
    stats = stats_from_run(parse_benchmark_output(CAPTURED_NEW), warmup_requested=1, method={})

    assert (stats.samples, stats.warmup) == (20, 4)
    assert stats.median_ms == pytest.approx(1249.706)
    assert stats.p90_ms == pytest.approx(1262.288)  # p95: the tool prints no p90
    assert stats.mean_ms == pytest.approx(1250.92)
    assert stats.method["warmup_avg_ms"] == pytest.approx(1263.77)


def test_a_single_run_phase_parses() -> None:
    run = parse_benchmark_output("count=1 curr=5120\n\nInference timings in us: Init: 900, First inference: 5120, "
                                 "Warmup (avg): nan, Inference (avg): 5120\n")

    stats = stats_from_run(run, warmup_requested=0, method={})

    assert (stats.samples, stats.warmup, stats.median_ms, stats.min_ms) == (1, 0, 5.12, 5.12)
    assert stats.method["warmup_avg_ms"] is None


def test_unparsable_text_raises() -> None:
    with pytest.raises(BenchmarkOutputError, match="TFLite's benchmark_model"):
        parse_benchmark_output("/system/bin/sh: benchmark_model: inaccessible or not found\n")


# -- the test model ------------------------------------------------------------------

def test_the_test_model_is_a_real_two_layer_perceptron(tmp_path: Path) -> None:
    path = write_dense_model(tmp_path / "mlp.tflite", features=8, hidden=16, seed=3)
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    x = np.linspace(-1, 1, 8, dtype=np.float32)[None, :]

    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((16, 8)).astype(np.float32) / np.sqrt(8)
    w2 = rng.standard_normal((8, 16)).astype(np.float32) / np.sqrt(16)
    np.testing.assert_allclose(output, np.maximum(x @ w1.T, 0) @ w2.T, rtol=1e-4, atol=1e-5)
    assert dense_model_bytes()[4:8] == b"TFL3"
