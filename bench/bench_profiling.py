"""Operator profiling benchmarks: throughput and repeatability of each backend.

Profiles the same list of latency keys twice with each backend, side by side
in one run, and prints for each backend:

- ops/min: keys profiled per minute over both passes, build + export/convert
  + measurement (what an agent filling a latency database sees);
- repeatability: median over ops of (pass-2 median / pass-1 median), the
  median-of-medians, of the clock's figures (raw) and of the figures at one
  pace (paced, as the latency database stores them: latency_db.pace), and
  the 90th percentile of |ratio - 1| over ops (paced);
- converged: the share of measurements whose block CV reached the threshold.

Never part of the tests (tests only assert a loose bound). This machine is
shared and noisy: compare ratios, not absolute figures.

    .venv/bin/python bench/bench_profiling.py
    .venv/bin/python bench/bench_profiling.py --backends torch,litert --space tiny --resolution 32 --limit 0
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from device_agents.profiling import BackendUnavailable, MeasurementMethod, get_backend, profile_key  # noqa: E402
from latency_db import at_pace, yardstick_ms  # noqa: E402
from search_spaces import get_space, space_keys  # noqa: E402


def sample_keys(space: str, resolution: int, num_classes: int, limit: int) -> list[str]:
    """The space's distinct keys; with a limit, that many spread evenly over them."""
    keys = space_keys(get_space(space).layout(resolution, num_classes, 3))
    if 0 < limit < len(keys):
        step = len(keys) / limit
        keys = [keys[int(i * step)] for i in range(limit)]
    return keys


def bench_backend(name: str, keys: list[str], method: MeasurementMethod) -> dict[str, float] | str:
    try:
        backend = get_backend(name)
    except BackendUnavailable as exc:
        return f"skipped: {exc}"
    first = profile_key(backend, keys[0], method)  # first-use costs (imports, exporter set-up) are not throughput
    pace = yardstick_ms(first)  # the pace every paced figure is given at, as the latency database does
    passes: list[list[float]] = []
    raw_passes: list[list[float]] = []
    converged = 0
    start = time.perf_counter()
    for _ in range(2):
        medians, raw = [], []
        for key in keys:
            stats = profile_key(backend, key, method)
            medians.append(at_pace(stats, pace).median_ms if pace else stats.median_ms)
            raw.append(stats.method.get("raw_median_ms", stats.median_ms))
            converged += bool(stats.method["converged"])
        passes.append(medians)
        raw_passes.append(raw)
    elapsed_s = time.perf_counter() - start
    ratios = [second / first for first, second in zip(*passes, strict=True)]
    deviations = sorted(abs(ratio - 1) for ratio in ratios)
    return {
        "ops_per_min": 2 * len(keys) / elapsed_s * 60,
        "raw_median_ratio": statistics.median(b / a for a, b in zip(*raw_passes, strict=True)),
        "median_ratio": statistics.median(ratios),
        "p90_deviation": deviations[min(len(deviations) - 1, int(0.9 * len(deviations)))],
        "converged": converged / (2 * len(keys)),
        "sum_ms": sum(passes[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="torch,onnxruntime,litert")
    parser.add_argument("--space", default="proxyless-mobile")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=24, help="keys to profile, spread over the network (0 = all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    keys = sample_keys(args.space, args.resolution, args.num_classes, args.limit)
    method = MeasurementMethod(threads=args.threads)
    print(f"{len(keys)} keys of {args.space} at {args.resolution}px, each profiled twice; method {method.to_dict()}")
    header = f"{'backend':<12} {'ops/min':>8} {'raw pass2/pass1':>16} {'paced pass2/pass1':>18} {'p90 |ratio-1|':>14}"
    print(f"{header} {'converged':>10} {'sum ms':>9}")
    for name in args.backends.split(","):
        result = bench_backend(name, keys, method)
        if isinstance(result, str):
            print(f"{name:<12} {result}")
            continue
        print(
            f"{name:<12} {result['ops_per_min']:>8.1f} {result['raw_median_ratio']:>16.3f} {result['median_ratio']:>18.3f} "
            f"{result['p90_deviation']:>14.3f} {result['converged']:>10.0%} {result['sum_ms']:>9.2f}"
        )


if __name__ == "__main__":
    main()
