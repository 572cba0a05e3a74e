"""Measurements that know when they are wrong (issue 18, part 1): a busy
process started on the measured core during a measurement is noticed and the
measurement retaken, then flagged with the reason; the cores lock pauses a
trainer while a measurement runs; a flagged network never calibrates."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from device_agents import cores
from device_agents.profiling import MeasurementMethod, NetworkToTime, get_backend, measure_networks
from device_agents.profiling.contention import measure_checked
from latency_db import MeasurementStats
from search_spaces import build_model, sample_archs

BUSY = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"


@pytest.fixture(scope="module")
def one_network():  # type: ignore[no-untyped-def]
    """A network of the tiny space at 8 px, opened once in ONNX Runtime (1 thread)."""
    (arch,) = sample_archs("tiny", 1, 0, 8, 10, 1)
    return get_backend("onnxruntime"), NetworkToTime(build_model(arch).eval(), (1, 1, 8, 8))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_a_busy_process_started_during_a_measurement_is_noticed_retaken_and_flagged(one_network) -> None:
    backend, network = one_network
    cpu = min(os.sched_getaffinity(0))
    # The measurement pinned to one core; a busy process pinned to the same core starts
    # 0.1 s into the first of its 0.4 s attempts and runs through the retakes.
    method = MeasurementMethod(min_seconds=0.4, affinity=(cpu,), retakes=1)
    busy: list[subprocess.Popen[bytes]] = []
    timer = threading.Timer(0.1, lambda: busy.append(subprocess.Popen([sys.executable, "-c", BUSY, str(cpu)])))

    def take() -> MeasurementStats:
        (result,) = measure_networks(backend, [network], method)
        assert isinstance(result, MeasurementStats), result
        return result

    timer.start()
    try:
        stats = measure_checked(take, method, cores_wait_s=0.0)
    finally:
        timer.cancel()
        for process in busy:
            process.kill()
            process.wait()

    assert busy, "the busy process never started"
    first = (stats.method["retaken"] or [stats.method])[0]
    # Retaken: the first attempt was noisy (its reasons are kept) ...
    assert stats.method["attempts"] == 2
    # ... and the busy process ran through the retake: the figure is kept, flagged, with the evidence.
    assert stats.method["reliable"] is False
    reason = stats.method["unreliable_reason"]
    assert "on a CPU" in reason or "yardstick moved" in reason or "coefficient of variation" in reason
    assert stats.method["cpu_share"] < method.min_cpu_share or stats.method["yardstick_drift"] > 0.5 \
        or stats.cv > method.max_cv
    assert "load_avg" in stats.method and "yardstick_drift" in stats.method
    assert first.get("reasons") or first.get("unreliable_reason")


def test_training_pauses_at_its_next_step_while_a_measurement_holds_the_cores(tmp_path: Path) -> None:
    lock = tmp_path / "cores.lock"
    steps: list[float] = []
    stop = threading.Event()

    def train() -> None:
        with cores.Training(lock) as share:
            while not stop.is_set():
                share.step()
                steps.append(time.monotonic())
                time.sleep(0.002)  # one "weight step"

    trainer = threading.Thread(target=train)
    trainer.start()
    try:
        while not steps:
            time.sleep(0.005)
        with cores.measuring(wait_s=10, path=lock) as grant:
            held_from = time.monotonic()
            time.sleep(0.2)
            held_to = time.monotonic()
        while not steps or steps[-1] < held_to:
            time.sleep(0.005)
    finally:
        stop.set()
        trainer.join()

    assert grant.exclusive and grant.evidence()["cores_shared_with_training"] is False
    assert not [t for t in steps if held_from <= t < held_to]  # no step ran while the measurement held the cores
    assert [t for t in steps if t >= held_to]  # and training went on afterwards


def test_a_measurement_beside_training_that_does_not_pause_is_flagged(tmp_path: Path) -> None:
    lock = tmp_path / "cores.lock"
    method = MeasurementMethod(retakes=1)
    calls = []

    def take() -> MeasurementStats:
        calls.append(1)
        return MeasurementStats.from_samples([1.0, 1.0, 1.0], warmup=0, method={})

    with cores.Training(lock):  # a trainer inside a long stretch without steps: it never pauses
        os.environ[cores.CORES_LOCK_ENV] = str(lock)
        try:
            stats = measure_checked(take, method, cores_wait_s=0.05)
        finally:
            del os.environ[cores.CORES_LOCK_ENV]

    assert len(calls) == 2 and stats.method["reliable"] is False
    assert "shared with training" in stats.method["unreliable_reason"]
    assert stats.method["cores_shared_with_training"] is True
