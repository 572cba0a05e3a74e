"""Latency predictor accuracy on this machine's CPU.

For one runtime: measure every op of a space into a latency table, measure
random whole networks end to end, fit the per-target calibration on some of
them and report, over held-out networks, the share predicted within +-10% of
the measured latency and Kendall's tau, for the plain LUT sum and calibrated.

    .venv/bin/python bench/bench_predictor.py --backend onnxruntime --space tiny --resolution 32 --held-out 50

The anchor: nn-Meter reports 99.0% within +-10% on a mobile CPU. Everything
runs in this process with the same backend code the device agent uses.

Every measurement is paired with the backend's yardstick (see
device_agents/profiling/method.py), so each one has two figures: the raw
median, and the latency at the target's pace (rescaled to the first
yardstick time, as the latency database does). Both are scored from the same
runs, side by side.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from device_agents.profiling import (  # noqa: E402
    MeasurementMethod,
    NetworkToTime,
    build_from_key,
    get_backend,
    measure_networks,
)
from device_agents.profiling.profiler import open_network  # noqa: E402
from latency_db import LatencyPredictor, at_pace, fit_calibration, kendall_tau, within_pct  # noqa: E402
from latency_db import MeasurementStats  # noqa: E402
from latency_db import yardstick_ms as yardstick_of  # noqa: E402
from search_spaces import Arch, arch_keys, build_model, get_space, sample_archs, space_keys  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--calibration", type=int, default=20, help="networks used to fit the calibration")
    parser.add_argument("--held-out", type=int, default=50, help="networks used to score the predictor")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default="rounds,sequential",
                        help="how whole networks are timed, in this order: rounds (the service's way: each "
                             "network in rounds with the yardstick, spanning --min-seconds), side-by-side (all "
                             "networks of a pass in the same rounds), sequential (one measure_module each)")
    parser.add_argument("--min-seconds", type=float, default=MeasurementMethod.min_seconds,
                        help="the least time an interleaved pass spans")
    args = parser.parse_args()

    backend = get_backend(args.backend)
    method = MeasurementMethod(threads=args.threads, min_seconds=args.min_seconds)
    layout = get_space(args.space).layout(args.resolution, 10, 3)
    started = time.perf_counter()
    pace: list[float] = []  # the first yardstick time: the pace every figure is given at

    def set_pace(stats: MeasurementStats) -> None:
        """The first yardstick time becomes the pace (once)."""
        if not pace:
            first = yardstick_of(stats)
            if first is None:
                raise SystemExit(f"backend {args.backend} ran no yardstick; this bench compares paced figures")
            pace.append(first)

    def measured(module: nn.Module, shape: tuple[int, ...]) -> tuple[float, float]:
        """(raw median, median at the pace) of one measure_module."""
        stats = backend.measure_module(module, shape, method)
        set_pace(stats)
        return stats.method["raw_median_ms"], at_pace(stats, pace[0]).median_ms

    lut: dict[str, dict[str, float]] = {"raw": {}, "paced": {}}
    for key in space_keys(layout):
        lut["raw"][key], lut["paced"][key] = measured(*build_from_key(key))
    op_minutes = (time.perf_counter() - started) / 60
    print(f"{args.backend} {backend.version}, {args.space} at {args.resolution}px, {args.threads} thread(s): "
          f"{len(lut['raw'])} ops profiled in {op_minutes * 60:.0f} s ({len(lut['raw']) / op_minutes:.0f} ops/min), "
          f"yardstick {pace[0]:.4f} ms at the start")

    archs = sample_archs(args.space, args.calibration + args.held_out, seed=1, resolution=args.resolution,
                         num_classes=10, in_channels=3)
    shape = (1, 3, args.resolution, args.resolution)
    fit_archs, held_out = archs[: args.calibration], archs[args.calibration:]

    def timed(group: Sequence[Arch], how: str) -> dict[str, list[float]]:  # {"raw": [...], "paced": [...]}
        """Whole networks timed ``how`` (see --methods), as (raw median, median at the pace)."""
        if how == "sequential":
            figures = [measured(build_model(a).eval(), shape) for a in group]
        else:
            networks = [NetworkToTime(build_model(a).eval(), shape) for a in group]
            results: Sequence[MeasurementStats | Exception]
            if how == "side-by-side":  # every network of the pass in the same rounds
                if not hasattr(backend, "measure_runs"):
                    raise SystemExit(f"backend {args.backend} cannot time networks side by side")
                results = backend.measure_runs([open_network(backend, n, method) for n in networks], method)
            else:  # "rounds": the service's way, each network in rounds with the yardstick only
                results = measure_networks(backend, networks, method)
            timed_stats = []
            for stats in results:
                if isinstance(stats, Exception):
                    raise stats
                timed_stats.append(stats)
            set_pace(timed_stats[0])
            figures = [(s.method["raw_median_ms"], at_pace(s, pace[0]).median_ms) for s in timed_stats]
        return {"raw": [f[0] for f in figures], "paced": [f[1] for f in figures]}

    print(f"calibration networks: {len(fit_archs)}; held-out networks: {len(held_out)} (each timed in a pass of "
          f"its own, then again in a third pass: how far two measurements of one network agree)")
    for how in args.methods.split(","):
        started = time.perf_counter()
        fit_times, truth_times, again_times = timed(fit_archs, how), timed(held_out, how), timed(held_out, how)
        print(f"== whole networks timed {how} ({time.perf_counter() - started:.0f} s for the three passes)")
        for kind in ("raw", "paced"):
            fit_rows = [(sum(lut[kind][k] for k in arch_keys(a)), len(arch_keys(a)), m)
                        for a, m in zip(fit_archs, fit_times[kind])]
            calibration = fit_calibration(fit_rows)
            truth = truth_times[kind]
            predictions = {
                "LUT sum": [LatencyPredictor(lut[kind]).predict(arch_keys(a)) for a in held_out],
                "calibrated": [LatencyPredictor(lut[kind], calibration).predict(arch_keys(a)) for a in held_out],
            }
            label = "raw medians" if kind == "raw" else f"at the yardstick's pace ({pace[0]:.4f} ms)"
            print(f"-- {label}: measured {min(truth):.4f}-{max(truth):.4f} ms; calibration a={calibration.a:.3f} "
                  f"b={calibration.b:.4f} c={calibration.c:.4f} (rel. RMSE {calibration.rel_rmse:.3f}, "
                  f"{calibration.outliers} outliers)")
            # The noise ceiling: a predictor cannot agree with a measurement better than
            # a second measurement of the same network does.
            rows = [("re-measured", again_times[kind]), *predictions.items()]
            for name, predicted in rows:
                note = "   (the same networks measured again)" if name == "re-measured" else ""
                print(f"   {name:11} within +-10%: {within_pct(predicted, truth, 10):6.1%}   "
                      f"Kendall tau: {kendall_tau(predicted, truth):.3f}{note}")


if __name__ == "__main__":
    main()
