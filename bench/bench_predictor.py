"""Latency predictor accuracy on this machine's CPU.

For one runtime: measure every op of a space into a latency table, measure
random whole networks end to end, fit the per-target calibration on some of
them and report, over held-out networks, the share predicted within +-10% of
the measured latency and Kendall's tau, for the plain LUT sum and calibrated.

    .venv/bin/python bench/bench_predictor.py --backend onnxruntime --space tiny --resolution 32 --held-out 50

The anchor: nn-Meter reports 99.0% within +-10% on a mobile CPU. Everything
runs in this process with the same backend code the device agent uses.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from device_agents.profiling import MeasurementMethod, build_from_key, get_backend  # noqa: E402
from latency_db import LatencyPredictor, fit_calibration, kendall_tau, within_pct  # noqa: E402
from search_spaces import arch_keys, build_model, get_space, sample_archs, space_keys  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--calibration", type=int, default=20, help="networks used to fit the calibration")
    parser.add_argument("--held-out", type=int, default=50, help="networks used to score the predictor")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    backend = get_backend(args.backend)
    method = MeasurementMethod(threads=args.threads)
    layout = get_space(args.space).layout(args.resolution, 10, 3)
    started = time.perf_counter()
    lut = {}
    for key in space_keys(layout):
        module, shape = build_from_key(key)
        lut[key] = backend.measure_module(module, shape, method).median_ms
    op_minutes = (time.perf_counter() - started) / 60
    print(f"{args.backend} {backend.version}, {args.space} at {args.resolution}px, {args.threads} thread(s): "
          f"{len(lut)} ops profiled in {op_minutes * 60:.0f} s ({len(lut) / op_minutes:.0f} ops/min)")

    archs = sample_archs(args.space, args.calibration + args.held_out, seed=1, resolution=args.resolution,
                         num_classes=10, in_channels=3)
    rows, repeats = [], []
    for index, arch in enumerate(archs):
        keys = arch_keys(arch)
        net, shape = build_model(arch).eval(), (1, 3, args.resolution, args.resolution)
        measured = backend.measure_module(net, shape, method).median_ms
        rows.append((sum(lut[k] for k in keys), len(keys), measured))
        if index >= args.calibration:  # measured again: how far two measurements of one network agree
            repeats.append(backend.measure_module(net, shape, method).median_ms)
    fit_rows, test_rows = rows[: args.calibration], rows[args.calibration:]
    calibration = fit_calibration(fit_rows)
    plain = LatencyPredictor(lut)
    calibrated = LatencyPredictor(lut, calibration)
    measured = [m for _, _, m in test_rows]
    predictions = {
        "LUT sum": [plain.predict(arch_keys(a)) for a in archs[args.calibration:]],
        "calibrated": [calibrated.predict(arch_keys(a)) for a in archs[args.calibration:]],
    }
    print(f"calibration fitted on {len(fit_rows)} networks: {calibration.to_dict()}")
    print(f"held-out networks: {len(test_rows)}, measured {min(measured):.3f}-{max(measured):.3f} ms")
    # The noise ceiling: a predictor cannot agree with a measurement better than
    # a second measurement of the same network does.
    print(f"{'re-measured':11} within +-10%: {within_pct(repeats, measured, 10):6.1%}   "
          f"Kendall tau: {kendall_tau(repeats, measured):.3f}   (the same networks measured twice)")
    for name, predicted in predictions.items():
        print(f"{name:11} within +-10%: {within_pct(predicted, measured, 10):6.1%}   "
              f"Kendall tau: {kendall_tau(predicted, measured):.3f}")


if __name__ == "__main__":
    main()
