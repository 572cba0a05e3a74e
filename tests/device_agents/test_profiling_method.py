"""The timing loop: warm-up, blocks, CV-driven stopping, affinity, temperature."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from device_agents.profiling import MeasurementMethod, measure, read_temperature_c
from device_agents.profiling.method import coefficient_of_variation


def busy_wait(ms: float) -> Callable[[], None]:
    """A callable that spins for ``ms`` of wall time: steadier than sleep on a loaded machine."""

    def run() -> None:
        end = time.perf_counter_ns() + int(ms * 1e6)
        while time.perf_counter_ns() < end:
            pass

    return run


def scripted_timer(block_ms: list[float]) -> Callable[[Callable[[], object], int], float]:
    """A block timer that runs the block and reports the next scripted time (in ms for the whole block)."""
    times: Iterator[float] = iter(block_ms)

    def time_block(run: Callable[[], object], runs: int) -> float:
        for _ in range(runs):
            run()
        return next(times)

    return time_block


def test_measure_times_a_real_callable_with_the_real_clock() -> None:
    # Only what holds on a loaded machine is asserted: a 1 ms busy wait can never
    # take less than 1 ms. Convergence is tested with a scripted clock below;
    # how steady real timings are is bench/bench_profiling.py's business.
    method = MeasurementMethod(warmup=2, block_size=4, min_blocks=3, max_blocks=10, cv_threshold=0.2)

    stats = measure(busy_wait(1.0), method)

    assert 0.95 <= stats.min_ms <= stats.median_ms <= stats.p90_ms
    assert 3 <= stats.method["blocks"] <= 10
    assert stats.samples == stats.method["blocks"] * 4
    assert stats.warmup == 2


def test_measure_records_the_settings_it_used() -> None:
    method = MeasurementMethod(warmup=1, block_size=2, min_blocks=2, max_blocks=3, threads=3, cooldown_s=0.0)

    stats = measure(lambda: None, method)

    for name, value in method.to_dict().items():
        if name != "yardstick":
            assert stats.method[name] == value
    # ... plus the evidence of contention: the machine's load (threads=3: no CPU share of one thread).
    assert set(stats.method) == {*method.to_dict(), "blocks", "block_runs", "converged", "load_avg"}
    assert stats.method["yardstick"] is False  # asked for, but no yardstick was given: says what was done


def paced_timer(op_ms: float, stick_ms: float, slowdowns: list[float]) -> Callable[[Callable[[], object], int], float]:
    """A clock for a machine whose speed changes: block k of the op and the
    yardstick's block after it both run slowdowns[k] times slower (the calls
    before the first block, one run of each, at full speed)."""
    state = {"op": 0, "stick": 0}

    def time_block(run: Callable[[], object], runs: int) -> float:
        kind = "op" if run is op else "stick"
        index = state[kind] - 1  # -1: the single runs that size the yardstick's block
        state[kind] += 1
        slowdown = slowdowns[index] if index >= 0 else 1.0
        return runs * (op_ms if kind == "op" else stick_ms) * slowdown

    def op() -> None: ...

    time_block.op = op  # type: ignore[attr-defined]
    return time_block


def test_a_yardstick_cancels_the_machine_slowing_down_between_blocks() -> None:
    # The machine runs at full speed, then twice as slow, then full speed again:
    # the raw block means disagree by 2x, their ratios to the yardstick do not.
    slowdowns = [1.0, 2.0, 2.0, 1.0, 2.0, 1.0]
    timer = paced_timer(op_ms=0.5, stick_ms=0.1, slowdowns=slowdowns)
    method = MeasurementMethod(warmup=2, block_size=4, min_blocks=6, max_blocks=6, cv_threshold=0.01)

    stats = measure(timer.op, method, timer=timer, yardstick=lambda: None)  # type: ignore[attr-defined]

    assert stats.cv == pytest.approx(0.0, abs=1e-12) and stats.method["converged"] is True
    stick_median = 0.1 * 1.5  # median of the yardstick's block means, 0.1 and 0.2 ms three times each
    assert stats.method["yardstick_ms"] == pytest.approx(stick_median)
    assert stats.median_ms == pytest.approx(5.0 * stick_median)  # the op is 5 yardsticks long
    assert stats.method["raw_median_ms"] == pytest.approx(0.75)  # what plain timing would have said
    # The yardstick's block is matched to the op's: 5x longer runs, so 5x as many of the yardstick.
    assert stats.method["yardstick_runs"] == 20


def test_without_the_yardstick_setting_plain_block_means_are_the_samples() -> None:
    timer = paced_timer(op_ms=0.5, stick_ms=0.1, slowdowns=[1.0, 2.0, 1.0])
    method = MeasurementMethod(warmup=0, block_size=2, min_blocks=3, max_blocks=3, yardstick=False)
    stick_calls = []

    stats = measure(timer.op, method, timer=timer, yardstick=lambda: stick_calls.append(1))  # type: ignore[attr-defined]

    assert stick_calls == [] and stats.method["yardstick"] is False
    assert "yardstick_ms" not in stats.method
    assert stats.median_ms == pytest.approx(0.5)  # medians of 0.5, 1.0, 0.5: the slow block shows


def test_measure_runs_the_warmup_then_whole_blocks_and_syncs_after_each() -> None:
    calls, syncs = [], []
    method = MeasurementMethod(warmup=7, block_size=5, min_blocks=4, max_blocks=4, min_block_ms=0)

    stats = measure(lambda: calls.append(1), method, sync=lambda: syncs.append(len(calls)))

    assert len(calls) == 7 + 4 * 5
    # once after the warm-up, then at the end of every block
    assert syncs == [7, 12, 17, 22, 27]
    assert stats.samples == 20


def test_blocks_of_a_fast_op_grow_to_last_min_block_ms() -> None:
    # 0.01 ms a run: a block of 10 would last 0.1 ms, so it grows to 100 runs (1 ms).
    method = MeasurementMethod(warmup=0, block_size=10, min_blocks=3, max_blocks=3, min_block_ms=1.0)

    stats = measure(lambda: None, method, timer=lambda run, runs: runs * 0.01)

    assert stats.method["block_runs"] == 100
    assert stats.samples == 300
    assert stats.median_ms == pytest.approx(0.01)


def test_a_slow_op_keeps_block_size_runs_a_block() -> None:
    method = MeasurementMethod(warmup=0, block_size=4, min_blocks=2, max_blocks=2, min_block_ms=1.0)

    stats = measure(lambda: None, method, timer=lambda run, runs: runs * 2.0)

    assert stats.method["block_runs"] == 4 and stats.samples == 8


def test_noisy_blocks_grow_to_the_cap_and_report_not_converged() -> None:
    method = MeasurementMethod(warmup=0, block_size=1, min_blocks=3, max_blocks=8, cv_threshold=0.05, min_block_ms=0)
    timer = scripted_timer([1.0, 3.0] * 10)

    stats = measure(lambda: None, method, timer=timer)

    assert stats.method["blocks"] == 8
    assert stats.method["converged"] is False
    assert stats.cv > 0.05
    assert stats.median_ms == pytest.approx(2.0)
    assert stats.min_ms == pytest.approx(1.0)


def test_blocks_stop_growing_as_soon_as_the_cv_is_under_the_threshold() -> None:
    block_ms = [10.0, 12.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]
    method = MeasurementMethod(warmup=0, block_size=2, min_blocks=2, max_blocks=12, cv_threshold=0.1, min_block_ms=0)
    expected_blocks = next(n for n in range(2, 13) if coefficient_of_variation(block_ms[:n]) <= 0.1)

    stats = measure(lambda: None, method, timer=scripted_timer(block_ms))

    assert 2 < expected_blocks < 12  # the script needs growth, and converges before the cap
    assert stats.method["blocks"] == expected_blocks
    assert stats.method["converged"] is True
    assert stats.median_ms == pytest.approx(5.0)  # block of 2 runs took 10 ms: 5 ms a run


def test_a_callable_with_real_jitter_grows_blocks_to_the_cap() -> None:
    durations = iter([0.05, 1.5] * 50)
    method = MeasurementMethod(warmup=0, block_size=1, min_blocks=2, max_blocks=6, cv_threshold=0.05, min_block_ms=0)

    stats = measure(lambda: busy_wait(next(durations))(), method)

    recorded = {k: v for k, v in stats.method.items() if k not in ("cpu_share", "load_avg")}  # the evidence
    assert recorded == {**method.to_dict(), "blocks": 6, "block_runs": 1, "converged": False, "yardstick": False}


def test_cooldown_pauses_before_measuring() -> None:
    method = MeasurementMethod(warmup=0, block_size=1, min_blocks=2, max_blocks=2, cooldown_s=0.05)

    start = time.perf_counter()
    measure(lambda: None, method)

    assert time.perf_counter() - start >= 0.05


def _allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="this platform cannot set CPU affinity")
def test_affinity_pins_every_thread_while_measuring_and_restores_after() -> None:
    allowed = _allowed_cpus()
    if len(allowed) < 2:
        pytest.skip(f"pinning is only observable with 2+ usable CPUs; this process may use {allowed}")
    target = allowed[-1]
    stop = threading.Event()
    worker_id: list[int] = []
    started = threading.Event()

    def worker() -> None:  # stands in for a runtime's thread pool, started before the measurement
        worker_id.append(threading.get_native_id())
        started.set()
        stop.wait(10)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    started.wait(5)
    seen: list[tuple[set[int], set[int]]] = []
    method = MeasurementMethod(warmup=0, block_size=1, min_blocks=2, max_blocks=2, affinity=(target,))
    try:
        stats = measure(lambda: seen.append((os.sched_getaffinity(0), os.sched_getaffinity(worker_id[0]))), method)
        after = (os.sched_getaffinity(0), os.sched_getaffinity(worker_id[0]))
    finally:
        stop.set()
        thread.join(5)

    assert seen and all(mine == {target} and theirs == {target} for mine, theirs in seen)
    assert after == (set(allowed), set(allowed))
    assert stats.method["affinity"] == [target]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="this platform cannot set CPU affinity")
def test_a_thread_started_while_pinned_gets_the_original_mask_back() -> None:
    allowed = _allowed_cpus()
    if len(allowed) < 2:
        pytest.skip(f"pinning is only observable with 2+ usable CPUs; this process may use {allowed}")
    stop = threading.Event()
    born: list[int] = []
    started = threading.Event()

    def pool_thread() -> None:  # stands in for a runtime's pool created lazily during the first run
        born.append(threading.get_native_id())
        started.set()
        stop.wait(10)

    def run() -> None:
        if not born:
            threading.Thread(target=pool_thread, daemon=True).start()
            started.wait(5)

    method = MeasurementMethod(warmup=1, block_size=1, min_blocks=2, max_blocks=2, affinity=(allowed[0],))
    try:
        measure(run, method)
        after = os.sched_getaffinity(born[0])
    finally:
        stop.set()

    assert after == set(allowed)


def test_affinity_outside_the_allowed_cpus_is_refused_naming_them() -> None:
    not_allowed = max(_allowed_cpus()) + 1000
    method = MeasurementMethod(warmup=0, block_size=1, min_blocks=2, max_blocks=2, affinity=(not_allowed,))

    with pytest.raises(ValueError) as excinfo:
        measure(lambda: None, method)

    assert str(not_allowed) in str(excinfo.value)
    assert os.sched_getaffinity(0) == set(_allowed_cpus())


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"min_blocks": 1}, "min_blocks"),
        ({"min_blocks": 5, "max_blocks": 4}, "max_blocks"),
        ({"block_size": 0}, "block_size"),
        ({"warmup": -1}, "warmup"),
        ({"cv_threshold": 0}, "cv_threshold"),
        ({"threads": 0}, "threads"),
        ({"affinity": ()}, "affinity"),
        ({"affinity": "0"}, "affinity"),
        ({"cooldown_s": -1}, "cooldown_s"),
        ({"yardstick": "yes"}, "yardstick"),
        ({"min_block_ms": -1}, "min_block_ms"),
    ],
)
def test_bad_methods_are_refused_naming_the_setting(settings: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        MeasurementMethod(**settings)  # type: ignore[arg-type]


def test_temperature_is_the_hottest_readable_zone(tmp_path: Path) -> None:
    for zone, content in (("thermal_zone0", "45000\n"), ("thermal_zone1", "51500\n"), ("thermal_zone2", "n/a\n")):
        (tmp_path / zone).mkdir()
        (tmp_path / zone / "temp").write_text(content)

    assert read_temperature_c(str(tmp_path / "thermal_zone*" / "temp")) == pytest.approx(51.5)
    assert read_temperature_c(str(tmp_path / "missing*" / "temp")) is None


def test_op_and_yardstick_runs_are_woven_together_in_short_stretches() -> None:
    from device_agents.profiling.method import _interleaved_block

    calls: list[str] = []
    op_ms, stick_ms = _interleaved_block(lambda: calls.append("op"), 6, lambda: calls.append("stick"), 3)

    # Three stretches of two op runs and one yardstick run: both see the same moments.
    assert calls == ["op", "op", "stick"] * 3
    assert op_ms >= 0 and stick_ms >= 0


def test_a_paced_measurement_on_the_real_clock_keeps_the_raw_figure_beside_it() -> None:
    method = MeasurementMethod(warmup=1, block_size=2, min_blocks=3, max_blocks=5, min_block_ms=0.0)

    stats = measure(busy_wait(1.0), method, yardstick=busy_wait(0.5))

    assert stats.method["yardstick"] is True
    assert stats.method["raw_median_ms"] >= 0.99 and stats.method["yardstick_ms"] >= 0.49
    assert stats.method["yardstick_runs"] >= 2 and 3 <= stats.method["blocks"] <= 5
