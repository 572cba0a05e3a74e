"""Whole networks timed in rounds (measure_interleaved) and the backends' way to
hold networks open for it (measure_networks)."""
from __future__ import annotations

from collections.abc import Callable

import pytest
from torch import nn

from device_agents.profiling import MeasurementMethod, NetworkToTime, get_backend, measure_interleaved, measure_networks
from search_spaces import build_model, sample_archs
from tests.device_agents.test_profiling_method import busy_wait


def counting(name: str, calls: list[str]) -> Callable[[], None]:
    def run() -> None:
        calls.append(name)

    return run


def test_rounds_span_min_seconds_on_the_real_clock() -> None:
    method = MeasurementMethod(warmup=2, min_rounds=3, min_seconds=0.3, yardstick=False)

    fast, slow = measure_interleaved([busy_wait(0.5), busy_wait(2.0)], method)

    # A busy wait never takes less than it waits; the rounds go on until they span 0.3 s.
    assert fast.min_ms >= 0.49 and slow.min_ms >= 1.99
    assert fast.method["rounds"] == slow.method["rounds"] >= 3
    assert fast.method["seconds"] >= 0.3
    assert fast.method["interleaved_with"] == 1
    assert fast.samples == fast.method["rounds"] * fast.method["block_runs"]


def test_every_round_times_each_network_once_in_a_shuffled_order_after_one_untimed_run() -> None:
    calls: list[str] = []
    runs = [counting(name, calls) for name in "abcd"]
    blocks: list[tuple[str, int]] = []

    def timer(run: Callable[[], object], n: int) -> float:
        before = len(calls)
        for _ in range(n):
            run()
        blocks.append((calls[before], n))
        return 1.0 * n  # 1 ms a run

    method = MeasurementMethod(warmup=3, min_rounds=6, min_seconds=0.0, min_block_ms=4.0, yardstick=False)
    results = measure_interleaved(runs, method, timer=timer, seed=1)

    timed = blocks[4 * 3:]  # after the warm-up runs (each timed alone, to size the blocks)
    assert len(timed) == 6 * 4
    rounds = [[name for name, _ in timed[k:k + 4]] for k in range(0, len(timed), 4)]
    assert all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # the order changes from round to round
    assert all(n == 4 for _, n in timed)  # blocks sized to min_block_ms from the warm-up runs
    # Per network: the warm-up runs, then per round one untimed run and the block's four.
    assert [calls.count(name) for name in "abcd"] == [3 + 6 * (1 + 4)] * 4
    assert [r.median_ms for r in results] == [1.0] * 4


def test_the_yardstick_cancels_a_slowdown_that_hits_both() -> None:
    """Round k runs everything slowdown[k] times slower: the paced figures do not move, the raw ones do."""
    slowdowns = [1.0, 2.0, 1.0, 3.0, 1.0, 1.5, 1.0]
    ms_per_run: dict[Callable[[], object], float] = {}
    a_net, b_net, stick = (lambda: None), (lambda: None), (lambda: None)
    ms_per_run.update({a_net: 2.0, b_net: 5.0, stick: 0.5})
    warmup_calls = 2 * 3  # two warm-up runs of each network and of the yardstick, timed one by one
    calls = {"n": 0}

    def timer(run: Callable[[], object], n: int) -> float:
        calls["n"] += 1
        timed = calls["n"] - warmup_calls - 1
        slowdown = 1.0 if timed < 0 else slowdowns[timed // 4]  # a round: two networks, each with a yardstick block
        return n * ms_per_run[run] * slowdown

    method = MeasurementMethod(warmup=2, min_rounds=len(slowdowns), min_seconds=0.0, min_block_ms=10.0)
    a, b = measure_interleaved([a_net, b_net], method, yardstick=stick, timer=timer)

    assert a.std_ms == pytest.approx(0.0, abs=1e-12) and b.std_ms == pytest.approx(0.0, abs=1e-12)
    assert b.median_ms / a.median_ms == pytest.approx(2.5)
    assert a.method["rounds"] == len(slowdowns) and a.method["yardstick"] is True
    assert a.method["yardstick_ms"] == pytest.approx(0.5 * 1.0)  # the median round ran at full speed
    assert a.method["raw_median_ms"] == pytest.approx(2.0)


def test_no_networks_no_results() -> None:
    assert measure_interleaved([], MeasurementMethod()) == []


def test_min_rounds_and_min_seconds_are_checked() -> None:
    with pytest.raises(ValueError, match="min_rounds must be an integer >= 1"):
        MeasurementMethod(min_rounds=0)
    with pytest.raises(ValueError, match=r"min_seconds must be a number in \[0, 3600\]"):
        MeasurementMethod(min_seconds=-1)


def tiny_networks(count: int) -> list[NetworkToTime]:
    archs = sample_archs("tiny", count, seed=3, resolution=8, num_classes=10, in_channels=1)
    return [NetworkToTime(build_model(arch).eval(), (1, 1, 8, 8)) for arch in archs]


@pytest.mark.parametrize("backend_name", ["onnxruntime", "litert", "torch"])
def test_measure_networks_times_real_networks_on_each_backend(backend_name: str) -> None:
    backend = get_backend(backend_name)
    method = MeasurementMethod(warmup=2, min_rounds=3, min_seconds=0.2)

    results = measure_networks(backend, tiny_networks(2), method)

    assert len(results) == 2
    for stats in results:
        assert not isinstance(stats, Exception), stats
        assert stats.median_ms > 0 and stats.method["backend"] == backend_name
        assert stats.method["rounds"] >= 3 and stats.method["yardstick_ms"] > 0


def test_a_network_that_cannot_be_loaded_is_reported_and_the_others_are_timed(tmp_path) -> None:  # noqa: ANN001
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    good = tiny_networks(1)[0]
    method = MeasurementMethod(warmup=1, min_rounds=2, min_seconds=0.0)

    first, second = measure_networks(get_backend("onnxruntime"), [NetworkToTime(path=broken), good], method)

    assert isinstance(first, Exception)
    assert not isinstance(second, Exception) and second.median_ms > 0


def test_a_backend_without_rounds_times_each_network_its_own_way() -> None:
    """A phone's benchmark_model runs each model in a process of its own: measure_module per network."""
    seen: list[nn.Module] = []

    class OneAtATime:
        name, version = "one-at-a-time", "1"

        def measure_module(self, module, input_shape, method):  # noqa: ANN001, ANN201
            seen.append(module)
            if len(seen) == 2:
                raise RuntimeError("device gone")
            return get_backend("torch").measure_module(module, input_shape, MeasurementMethod(min_blocks=2))

    networks = tiny_networks(3)
    results = measure_networks(OneAtATime(), networks, MeasurementMethod())  # type: ignore[arg-type]

    assert seen == [n.module for n in networks]
    assert isinstance(results[1], RuntimeError) and "device gone" in str(results[1])
    assert all(not isinstance(r, Exception) for r in (results[0], results[2]))


def test_a_network_is_a_module_with_its_shape_or_a_file(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="either a module with its input_shape, or a model file"):
        NetworkToTime()
    with pytest.raises(ValueError, match="either a module"):
        NetworkToTime(nn.Identity())
    with pytest.raises(ValueError, match="either a module"):
        NetworkToTime(nn.Identity(), (1, 1), path=tmp_path / "x.onnx")
