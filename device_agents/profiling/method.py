"""How an op is timed: the measurement method and the loop that applies it.

The loop has the shape of nanoGPT's ``bench.py`` grown into a protocol: warm
up, then time blocks of runs (synchronising at the end of each block), and add
blocks until the block means agree (their coefficient of variation is under a
threshold) or a cap is reached. Block means, not single runs, are the samples:
one run of a small op is shorter than the clock's noise and the scheduler's
hiccups, a block of them is not. The median of the block means is the
headline, robust to the odd block that a background process slowed down.

Pace: a shared or virtual machine does not run at one speed. On the 2-core VM
this project is developed on, the same ONNX session runs 0.061 ms a call for
seconds, then 0.128 ms for seconds, then 0.061 again (the host's other
tenants, frequency changes); two measurements of one network a minute apart
agree within 10% about half the time, so no table of op latencies measured at
one moment predicts a network measured at another. What does hold is the
*ratio* between two workloads timed block by block in turn: the slow spells hit
both. So each timed block of the measured op is paired with a block of a fixed
workload, the backend's *yardstick* (one op of the search space, built in the
same runtime with the same threads), and the samples are the ratios of the two
block means times the yardstick's median over the measurement. The latency
database then rescales every value to its target's one yardstick time (first
one recorded), so every latency of a target is given at one pace and a table
measured today predicts a network measured tomorrow. This is interleaved
measurement with a control, as in randomized multiple interleaved trials
(Abedi & Brecht, ICPE 2017) and duet benchmarking (Bulej et al., ICPE 2020).
The raw median is kept beside it in ``method["raw_median_ms"]``.
"""
from __future__ import annotations

import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

# The environment helpers lived here once; re-exported so that every import path keeps working.
from device_agents.profiling.environment import THERMAL_GLOB, cpu_affinity, gc_paused, read_temperature_c
from latency_db.records import MeasurementStats

__all__ = [
    "MAX_BLOCK_RUNS", "MAX_ROUNDS", "THERMAL_GLOB", "BlockTimer", "MeasurementMethod", "coefficient_of_variation",
    "cpu_affinity", "measure", "measure_interleaved", "read_temperature_c", "wall_clock_timer",
]
# Most runs in one block, of the op (grown to min_block_ms) or of the yardstick (matched to the op's block).
MAX_BLOCK_RUNS = 2000


@dataclass(frozen=True)
class MeasurementMethod:
    """The settings of one measurement; recorded beside every result so that results can be compared."""

    warmup: int = 10  # untimed runs first: caches, allocator, lazy initialisation, CPU clocks ramping up
    block_size: int = 10  # runs per timed block (at least); the block's mean is one sample
    # Blocks of a fast op grow to last at least this long, as timeit's autorange does: a block of
    # ten 10-microsecond runs is at the mercy of one timer tick or one interrupt. 0 keeps block_size.
    min_block_ms: float = 1.0
    min_blocks: int = 5  # blocks always timed before convergence is judged (>= 2: a CV needs two)
    max_blocks: int = 30  # cap: a measurement that never settles stops here and reports converged=False
    cv_threshold: float = 0.05  # stop once std / mean of the block means is at most this
    threads: int = 1  # intra-op threads the backend runs the op with
    affinity: tuple[int, ...] | None = None  # CPUs to pin the whole process to while measuring; None = as is
    cooldown_s: float = 0.0  # pause before warming up, so a device heated by the previous op can cool
    yardstick: bool = True  # pair each block with a block of the backend's yardstick (see the module's doc)
    # Whole networks (measure_interleaved): at least this many rounds, each timing one block of the
    # network (and of the yardstick), and rounds go on until they span min_seconds (see that function).
    min_rounds: int = 7
    min_seconds: float = 2.0
    # When a measurement is too noisy to keep (device_agents.profiling.contention): a CV of
    # the (paced) samples above max_cv, the yardstick moving more than max_yardstick_drift
    # ((max - min) / median of its blocks), the measuring thread on a CPU less than
    # min_cpu_share of the time (one thread only), or the cores shared with training
    # (device_agents.cores). Such a measurement is retaken up to ``retakes`` times, then
    # recorded as unreliable with the reason. Thresholds from this project's 2-core VM:
    # quiet, a network's CV was 0.03-0.09, its yardstick drift 0.1-0.3, its CPU share 0.95+;
    # beside other processes on its core, CPU shares of 0.2-0.6 and drifts of 0.5-1.5.
    max_cv: float = 0.15
    max_yardstick_drift: float = 0.5
    min_cpu_share: float = 0.6
    retakes: int = 2

    def __post_init__(self) -> None:
        for name, minimum in (("warmup", 0), ("block_size", 1), ("min_blocks", 2), ("threads", 1), ("min_rounds", 1),
                              ("retakes", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"MeasurementMethod.{name} must be an integer >= {minimum}, got {value!r}")
        max_blocks = self.max_blocks
        if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < self.min_blocks:
            raise ValueError(
                f"MeasurementMethod.max_blocks must be an integer >= min_blocks ({self.min_blocks}), "
                f"got {self.max_blocks!r}"
            )
        if isinstance(self.cv_threshold, bool) or not isinstance(self.cv_threshold, (int, float)) or not (
            0 < self.cv_threshold < 1
        ):
            raise ValueError(f"MeasurementMethod.cv_threshold must be a number in (0, 1), got {self.cv_threshold!r}")
        if isinstance(self.min_block_ms, bool) or not isinstance(self.min_block_ms, (int, float)) or not (
            0 <= self.min_block_ms <= 1000
        ):
            raise ValueError(f"MeasurementMethod.min_block_ms must be a number in [0, 1000], got {self.min_block_ms!r}")
        if isinstance(self.cooldown_s, bool) or not isinstance(self.cooldown_s, (int, float)) or self.cooldown_s < 0:
            raise ValueError(f"MeasurementMethod.cooldown_s must be a number >= 0, got {self.cooldown_s!r}")
        if isinstance(self.min_seconds, bool) or not isinstance(self.min_seconds, (int, float)) or not (
            0 <= self.min_seconds <= 3600
        ):
            raise ValueError(f"MeasurementMethod.min_seconds must be a number in [0, 3600], got {self.min_seconds!r}")
        for name in ("max_cv", "max_yardstick_drift", "min_cpu_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10:
                raise ValueError(f"MeasurementMethod.{name} must be a number in [0, 10], got {value!r}")
        if self.retakes > 5:
            raise ValueError(f"MeasurementMethod.retakes must be at most 5, got {self.retakes!r}")
        if not isinstance(self.yardstick, bool):
            raise ValueError(f"MeasurementMethod.yardstick must be true or false, got {self.yardstick!r}")
        if self.affinity is not None:
            cpus = tuple(self.affinity) if isinstance(self.affinity, (list, tuple, set, frozenset)) else ()
            if not cpus or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cpus):
                raise ValueError(
                    f"MeasurementMethod.affinity must be None or a non-empty list of CPU numbers >= 0, "
                    f"got {self.affinity!r}"
                )
            object.__setattr__(self, "affinity", tuple(sorted(set(cpus))))

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (affinity as a list)."""
        settings = asdict(self)
        settings["affinity"] = list(self.affinity) if self.affinity is not None else None
        return settings


class BlockTimer(Protocol):
    """Times one block: ``runs`` calls of ``run``; returns the elapsed milliseconds."""

    def __call__(self, run: Callable[[], object], runs: int) -> float: ...


def wall_clock_timer(sync: Callable[[], None] | None = None) -> BlockTimer:
    """A host-clock block timer (``time.perf_counter_ns``); ``sync`` waits for queued work before the clock stops."""

    def time_block(run: Callable[[], object], runs: int) -> float:
        start = time.perf_counter_ns()
        for _ in range(runs):
            run()
        if sync is not None:
            sync()
        return (time.perf_counter_ns() - start) / 1e6

    return time_block


def measure(
    run: Callable[[], object],
    method: MeasurementMethod,
    sync: Callable[[], None] | None = None,
    *,
    timer: BlockTimer | None = None,
    yardstick: Callable[[], object] | None = None,
) -> MeasurementStats:
    """Time ``run`` with ``method``; statistics over block means, in milliseconds per run.

    ``sync`` is called after the warm-up and at the end of each block (for
    asynchronous devices); ``timer`` replaces the host clock (e.g. CUDA events).
    ``method.threads`` is the backend's to apply; affinity and cooldown are
    applied here. The returned ``method`` dict holds the settings plus
    ``blocks`` (how many were timed) and ``converged`` (whether the CV of the
    samples reached the threshold before ``max_blocks``).

    With ``yardstick`` (and ``method.yardstick``), each block of ``run`` is
    followed by a block of ``yardstick``, and a sample is the ratio of the two
    block means times the yardstick's median block mean (see the module's
    doc); ``method`` then also holds ``yardstick_ms`` and ``raw_median_ms``.
    """
    time_block = timer if timer is not None else wall_clock_timer(sync)
    stick = yardstick if method.yardstick else None  # the yardstick that paces the blocks, if any
    paced = stick is not None
    if method.cooldown_s > 0:
        time.sleep(method.cooldown_s)
    op_means: list[float] = []
    stick_means: list[float] = []
    op_runs = stick_runs = method.block_size

    def one_block() -> float:
        if stick is not None and timer is None and sync is None:
            op_total, stick_total = _interleaved_block(run, op_runs, stick, stick_runs)
            op_means.append(op_total / op_runs)
            stick_means.append(stick_total / stick_runs)
        else:
            op_means.append(time_block(run, op_runs) / op_runs)
            if stick is None:
                return op_means[-1]
            stick_means.append(time_block(stick, stick_runs) / stick_runs)
        return op_means[-1] / stick_means[-1] if stick_means[-1] > 0 else 0.0

    with cpu_affinity(method.affinity), gc_paused():
        clocks = _Clocks()
        for _ in range(method.warmup):
            run()
            if stick is not None:
                stick()
        if sync is not None:
            sync()
        if method.min_block_ms > 0 or paced:
            # A probe block of each (not kept as a sample) sizes the blocks.
            op_ms = time_block(run, method.block_size) / method.block_size
            if method.min_block_ms > 0 and op_ms > 0:
                op_runs = _runs(method.min_block_ms / op_ms, method.block_size)
            if stick is not None:
                # The yardstick's block lasts about as long as the op's, so that it
                # samples the same stretch of time (a slow spell that starts in the
                # middle of a 25 ms block of a large op would be missed by a 0.4 ms
                # block of the yardstick), within a cap that bounds the cost.
                stick_ms = time_block(stick, method.block_size) / method.block_size
                if stick_ms > 0:
                    stick_runs = _runs(op_runs * op_ms / stick_ms, method.block_size)
        samples = [one_block() for _ in range(method.min_blocks)]
        cv = coefficient_of_variation(samples)
        while cv > method.cv_threshold and len(samples) < method.max_blocks:
            samples.append(one_block())
            cv = coefficient_of_variation(samples)
        evidence = clocks.evidence(method)
    blocks = len(samples)
    recorded: dict[str, Any] = {**method.to_dict(), "blocks": blocks, "block_runs": op_runs,
                                "converged": cv <= method.cv_threshold, **evidence}
    if paced:
        stick_ms = statistics.median(stick_means)
        samples = [ratio * stick_ms for ratio in samples]
        recorded.update(yardstick_ms=stick_ms, yardstick_runs=stick_runs, raw_median_ms=statistics.median(op_means),
                        yardstick_drift=yardstick_drift(stick_means))
    else:
        recorded["yardstick"] = False  # none was run, whatever the method asked for
    stats = MeasurementStats.from_samples(
        samples, warmup=method.warmup, method=recorded, temperature_c=read_temperature_c()
    )
    # The statistics describe block means; samples counts the timed runs behind them.
    return replace(stats, samples=blocks * op_runs)


# Most rounds of an interleaved measurement (networks so fast that min_seconds takes many rounds).
MAX_ROUNDS = 200


def measure_interleaved(
    runs: Sequence[Callable[[], object]],
    method: MeasurementMethod,
    sync: Callable[[], None] | None = None,
    *,
    yardstick: Callable[[], object] | None = None,
    timer: BlockTimer | None = None,
    seed: int = 0,
) -> list[MeasurementStats]:
    """Time whole networks in rounds spanning ``method.min_seconds``; one MeasurementStats per run, in order.

    Why not ``measure``: on a shared machine a whole network's time drifts by
    5-10% over seconds, so a measurement that stops after 20 ms (as soon as
    its blocks agree) is a measurement of one moment, and two such
    measurements a minute apart disagree by more than the 10% a predictor is
    judged by. Here each run is timed in rounds, one block per round (in an
    order shuffled per round when there are several runs: randomized
    multiple interleaved trials, Abedi & Brecht, ICPE 2017), and rounds go on
    until there are ``method.min_rounds`` of them and they span
    ``method.min_seconds``. Blocks are sized from the timed warm-up runs so
    that ``min_rounds`` rounds take about ``min_seconds``; a run's figure is
    the median of its block means. Each block starts with one untimed run,
    so that a network is timed warm (as it runs deployed, and as its ops
    were profiled), not in the cache the block before left.

    With ``yardstick`` (and ``method.yardstick``) each block is followed by a
    block of the yardstick lasting about as long, and the samples are paced as
    in ``measure``: the common drift cancels. ``timer`` replaces the host
    clock for the blocks (the rounds' span is always host time); ``seed``
    fixes the shuffles. Several networks side by side are timed in the cache
    the others leave; ``profiler.measure_networks`` times them one at a time.
    """
    if not runs:
        return []
    stick = yardstick if method.yardstick else None  # the yardstick that paces the blocks, if any
    paced = stick is not None
    time_block = timer if timer is not None else wall_clock_timer(sync)
    if method.cooldown_s > 0:
        time.sleep(method.cooldown_s)
    count = len(runs)
    net_means: list[list[float]] = [[] for _ in runs]
    stick_means: list[list[float]] = [[] for _ in runs]
    with cpu_affinity(method.affinity), gc_paused():
        per_run = [_warm_up(run, method.warmup, time_block) for run in runs]
        stick_ms = _warm_up(stick, method.warmup, time_block) if stick is not None else 0.0
        share = method.min_seconds * 1000 / method.min_rounds / (count * (2 if paced else 1))
        block_ms = max(method.min_block_ms, share)
        block_runs = [_runs(block_ms / ms, 1) if ms > 0 else MAX_BLOCK_RUNS for ms in per_run]
        stick_runs = [_runs(runs_ * ms / stick_ms, 1) if stick_ms > 0 else 1
                      for runs_, ms in zip(block_runs, per_run)]
        order = list(range(count))
        shuffle = random.Random(seed).shuffle
        clocks = _Clocks()
        started = time.perf_counter()
        rounds = 0
        while rounds < MAX_ROUNDS and (rounds < method.min_rounds
                                       or time.perf_counter() - started < method.min_seconds):
            shuffle(order)
            for index in order:
                # One untimed run first: the network before this one evicted this one's weights
                # from the core's cache, and a deployed network runs warm, as its ops were profiled.
                runs[index]()
                net_means[index].append(time_block(runs[index], block_runs[index]) / block_runs[index])
                if stick is not None:
                    # The yardstick's block after the network's, not woven with it run by run
                    # as in ``measure``: woven, each yardstick stretch ran cold after a network
                    # run, and in one LiteRT run of bench_predictor.py the paced re-measured
                    # agreement fell to 74% (calibrated 84%) against 100% block after block.
                    stick()
                    stick_means[index].append(time_block(stick, stick_runs[index]) / stick_runs[index])
            rounds += 1
        seconds = time.perf_counter() - started
        evidence = clocks.evidence(method)
    temperature = read_temperature_c()
    results = []
    for index in range(count):
        means = net_means[index]
        recorded: dict[str, Any] = {**method.to_dict(), "interleaved_with": count - 1, "rounds": rounds,
                                    "blocks": rounds, "block_runs": block_runs[index], "seconds": round(seconds, 3),
                                    **evidence}
        if paced:
            sticks = stick_means[index]
            stick_median = statistics.median(sticks)
            samples = [(net / stick if stick > 0 else 0.0) * stick_median for net, stick in zip(means, sticks)]
            recorded.update(yardstick_ms=stick_median, yardstick_runs=stick_runs[index],
                            raw_median_ms=statistics.median(means), yardstick_drift=yardstick_drift(sticks))
        else:
            samples = list(means)
            recorded["yardstick"] = False
        recorded["converged"] = len(samples) < 2 or coefficient_of_variation(samples) <= method.cv_threshold
        stats = MeasurementStats.from_samples(samples, warmup=method.warmup, method=recorded,
                                              temperature_c=temperature)
        results.append(replace(stats, samples=rounds * block_runs[index]))
    return results


def _warm_up(run: Callable[[], object], warmup: int, time_block: BlockTimer) -> float:
    """Run ``warmup`` untimed-for-the-result runs (at least one) and return the
    median of their times in ms: a first guess of one run, to size blocks."""
    times = [time_block(run, 1) for _ in range(max(1, warmup))]
    return statistics.median(times[len(times) // 2:])


def _runs(wanted: float, minimum: int) -> int:
    return int(min(MAX_BLOCK_RUNS, max(minimum, math.ceil(wanted))))


def _interleaved_block(
    run: Callable[[], object], op_runs: int, yardstick: Callable[[], object], stick_runs: int
) -> tuple[float, float]:
    """A block of ``op_runs`` runs of the op and ``stick_runs`` of the yardstick,
    woven together in short alternating stretches (e.g. 4 op runs, 1 yardstick
    run, 4 op runs, ...) and each stretch timed on the host clock: the op and
    its yardstick then see the same moments of the machine, not neighbouring
    ones. Returns the milliseconds spent in each."""
    stretches = min(op_runs, stick_runs)
    op_total = stick_total = 0
    op_done = stick_done = 0
    clock = time.perf_counter_ns
    for index in range(1, stretches + 1):
        op_until, stick_until = op_runs * index // stretches, stick_runs * index // stretches
        start = clock()
        while op_done < op_until:
            run()
            op_done += 1
        middle = clock()
        while stick_done < stick_until:
            yardstick()
            stick_done += 1
        end = clock()
        op_total += middle - start
        stick_total += end - middle
    return op_total / 1e6, stick_total / 1e6


def yardstick_drift(stick_means: Sequence[float]) -> float:
    """How far the yardstick moved within one measurement: (max - min) / median of
    its block means. Pacing cancels a slowdown that hits the network and the
    yardstick alike; a yardstick that moved a lot says the machine changed
    speed mid-measurement, which pacing corrects only in part (issue 18)."""
    values = [v for v in stick_means if v > 0]
    if len(values) < 2:
        return 0.0
    median = statistics.median(values)
    return (max(values) - min(values)) / median if median > 0 else 0.0


class _Clocks:
    """The evidence of a measurement besides its own figures: the share of the
    wall time the measuring thread spent on a CPU (``cpu_share``: below 1 when
    something else ran on its core; meaningful with one thread, when the
    runtime runs in the calling thread) and the machine's 1-minute load average
    at the end (``load_avg``, evidence only: it counts every tenant of a VM)."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.thread_time()

    def evidence(self, method: MeasurementMethod) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall
        cpu = time.thread_time() - self.cpu
        found: dict[str, Any] = {}
        if method.threads == 1 and wall > 0:
            found["cpu_share"] = round(min(cpu / wall, 1.0), 4)
        try:
            found["load_avg"] = round(os.getloadavg()[0], 2)
        except OSError:  # not every platform has one
            pass
        return found


def coefficient_of_variation(values: list[float]) -> float:
    """Sample standard deviation over mean (0 when the mean is 0)."""
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean > 0 else 0.0
