"""The predictor over a matrix of settings (issue 18, part 2; a small first cut).

For each space x resolution x runtime: every op of the space is profiled into
a latency table (at the yardstick's pace, as the latency database keeps it),
then whole networks are timed as the service times them (rounds with the
yardstick, one network at a time): calibration networks sampled with one seed,
held-out networks with another seed, never used in fitting. For each
calibration size the calibration is fitted on the first N calibration networks
and scored on the held-out ones: share within +-5% and +-10%, relative RMSE,
Kendall's tau. Each measurement's evidence is judged as the agent does
(device_agents.profiling.contention); the table says how many held-out
measurements were flagged noisy (they are still scored: this bench shows the
predictor against what was measured, noisy or not).

    .venv/bin/python bench/bench_predictor_matrix.py \
        --spaces tiny,proxyless-mobile --resolutions 8,32 --runtimes onnxruntime,pytorch \
        --calibration 8,16 --held-out 12 --min-seconds 0.5

The goal (issue 18): at least 95% of held-out networks within 10% in every cell.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from device_agents.profiling import MeasurementMethod, NetworkToTime, build_from_key, get_backend  # noqa: E402
from device_agents.profiling import measure_networks  # noqa: E402
from device_agents.profiling.contention import noise_reasons  # noqa: E402
from latency_db import CalibrationError, LatencyPredictor, MeasurementStats, at_pace, fit_calibration  # noqa: E402
from latency_db import kendall_tau  # noqa: E402
from latency_db import within_pct  # noqa: E402
from latency_db import yardstick_ms as yardstick_of  # noqa: E402
from search_spaces import Arch, arch_keys, build_model, get_space, sample_archs, space_keys  # noqa: E402

BACKENDS = {"onnxruntime": "onnxruntime", "pytorch": "torch", "litert": "litert"}
CALIBRATION_SEED, HELD_OUT_SEED = 101, 202  # never the seeds the search or the jobs use


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spaces", default="tiny,proxyless-mobile")
    parser.add_argument("--resolutions", default="8,32")
    parser.add_argument("--runtimes", default="onnxruntime,pytorch")
    parser.add_argument("--calibration", default="8,16", help="calibration sizes (networks fitted on)")
    parser.add_argument("--held-out", type=int, default=12)
    parser.add_argument("--min-seconds", type=float, default=0.5, help="each whole network's measurement spans this")
    args = parser.parse_args()
    sizes = [int(n) for n in args.calibration.split(",")]
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{os.cpu_count()} CPUs; held-out {args.held_out} networks (seed {HELD_OUT_SEED}), calibration "
          f"networks seed {CALIBRATION_SEED}; networks timed {args.min_seconds} s each")
    print("| space | px | runtime | calibration | within 5% | within 10% | rel. RMSE | Kendall tau | "
          "worst | flagged noisy (held-out) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for space in args.spaces.split(","):
        for resolution in (int(r) for r in args.resolutions.split(",")):
            for runtime in args.runtimes.split(","):
                cell(space, resolution, runtime, sizes, args.held_out, args.min_seconds)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def cell(space: str, resolution: int, runtime: str, sizes: list[int], held_out: int, min_seconds: float) -> None:
    started = time.perf_counter()
    backend = get_backend(BACKENDS[runtime])
    method = MeasurementMethod(threads=1, min_seconds=min_seconds)
    layout = get_space(space).layout(resolution, 10, 3)
    pace: list[float] = []

    def paced(stats: MeasurementStats) -> float:
        if not pace:
            first = yardstick_of(stats)
            if first is None:
                raise SystemExit(f"runtime {runtime} ran no yardstick")
            pace.append(first)
        return at_pace(stats, pace[0]).median_ms

    lut = {key: paced(backend.measure_module(*build_from_key(key), method)) for key in space_keys(layout)}
    shape = (1, 3, resolution, resolution)

    def timed(archs: list[Arch]) -> tuple[list[float], int]:
        figures, flagged = [], 0
        for arch in archs:
            (stats,) = measure_networks(backend, [NetworkToTime(build_model(arch).eval(), shape)], method)
            if isinstance(stats, Exception):
                raise stats
            flagged += bool(noise_reasons(stats, method))
            figures.append(paced(stats))
        return figures, flagged

    fit_archs = sample_archs(space, max(sizes), CALIBRATION_SEED, resolution, 10, 3)
    test_archs = sample_archs(space, held_out, HELD_OUT_SEED, resolution, 10, 3)
    fit_ms, _ = timed(fit_archs)
    truth, flagged = timed(test_archs)
    plain = LatencyPredictor(lut)
    for size in sizes:
        rows = [(plain.lut_sum(arch_keys(a)), len(arch_keys(a)), m) for a, m in zip(fit_archs[:size], fit_ms[:size])]
        try:
            predictor = LatencyPredictor(lut, fit_calibration(rows))
        except CalibrationError as exc:  # noisy figures can defeat the fit: the service then predicts the LUT sum
            print(f"| {space} | {resolution} | {runtime} | {size} | fit failed: {str(exc)[:60]}... (LUT sum below) "
                  "| | | | | |")
            predictor = plain
        predicted = [predictor.predict(arch_keys(a)) for a in test_archs]
        errors = (np.asarray(predicted) - np.asarray(truth)) / np.asarray(truth)
        rmse = math.sqrt(float(np.mean(errors ** 2)))
        print(f"| {space} | {resolution} | {runtime} | {size} | {within_pct(predicted, truth, 5):.0%} | "
              f"{within_pct(predicted, truth, 10):.0%} | {rmse:.3f} | {kendall_tau(predicted, truth):.2f} | "
              f"{float(np.max(np.abs(errors))):.0%} | {flagged} of {len(truth)} |", flush=True)
    print(f"<!-- {space} {resolution}px {runtime}: {len(lut)} ops, {time.perf_counter() - started:.0f} s -->",
          flush=True)


if __name__ == "__main__":
    main()
