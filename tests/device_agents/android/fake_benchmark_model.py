#!/usr/bin/env python3
"""A stand-in for TFLite's ``benchmark_model`` binary, for tests.

`install_benchmark_model(path)` writes this file with a shebang naming this
venv's Python, ready to be pushed to the ADB peer as the "binary". Run there,
it parses the real tool's ``--flag=value`` flags (unknown flags are an error,
so a misspelt flag fails the test), loads ``--graph`` with LiteRT's
interpreter, times the warm-up and timed phases for real with the real tool's
loop (at least N runs and at least S seconds, at most max_secs), and prints
the real tool's log lines, including::

    count=50 first=... curr=... min=... max=... avg=... std=... p5=... median=... p95=...
    Inference timings in us: Init: ..., First inference: ..., Warmup (avg): ..., Inference (avg): ...

It runs on the device side only: it imports nothing from this repository.
"""
from __future__ import annotations

import math
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# name -> (parser, default, label the real tool logs it under)
_FLAGS = {
    "graph": (str, "", "Graph"),
    "num_threads": (int, -1, "Num threads"),
    "warmup_runs": (int, 1, "Min warmup runs"),
    "warmup_min_secs": (float, 0.5, "Min warmup runs duration (seconds)"),
    "num_runs": (int, 50, "Min num runs"),
    "min_secs": (float, 1.0, "Min runs duration (seconds)"),
    "max_secs": (float, 150.0, "Max runs duration (seconds)"),
    "run_delay": (float, -1.0, "Inter-run delay (seconds)"),
    "use_gpu": ("bool", False, "Use gpu"),
    "use_xnnpack": ("bool", True, "Use xnnpack"),
    "use_nnapi": ("bool", False, "Use NNAPI"),
    "enable_op_profiling": ("bool", False, "Enable op profiling"),
    "verbose": ("bool", False, "Log parameter values verbosely"),
}


def install_benchmark_model(path: Path) -> Path:
    """Write this script to path as an executable run by this venv's Python."""
    source = Path(__file__).read_text().split("\n", 1)[1]  # drop the generic shebang
    path.write_text(f"#!{sys.executable}\n{source}")
    path.chmod(0o755)
    return path


def _log(message: str) -> None:
    print(f"INFO: {message}", flush=True)


def _fail(message: str) -> int:
    print(f"ERROR: {message}", file=sys.stderr, flush=True)
    return 1


def _parse_flags(argv: list[str]) -> tuple[dict[str, Any], list[str], list[str]]:
    """(values, names given explicitly, unconsumed arguments)."""
    values = {name: default for name, (_, default, _) in _FLAGS.items()}
    given, unconsumed = [], []
    for argument in argv:
        name, has_value, text = argument.removeprefix("--").partition("=")
        if not argument.startswith("--") or not has_value or name not in _FLAGS:
            unconsumed.append(argument)
            continue
        kind = _FLAGS[name][0]
        try:
            if kind == "bool":
                if text not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                values[name] = text in ("true", "1")
            else:
                values[name] = kind(text)
        except ValueError:
            unconsumed.append(argument)
            continue
        given.append(name)
    return values, given, unconsumed


def _percentile(sorted_us: list[int], percent: float) -> int:
    # Nearest rank.
    rank = max(1, math.ceil(percent / 100 * len(sorted_us)))
    return sorted_us[rank - 1]


def _stats_line(times_us: list[int]) -> str:
    if not times_us:
        return "count=0"
    ordered = sorted(times_us)
    percentiles = (f" p5={_percentile(ordered, 5)} median={_percentile(ordered, 50)} "
                   f"p95={_percentile(ordered, 95)}")
    if len(times_us) == 1:
        return f"count=1 curr={times_us[0]}{percentiles}"
    avg = sum(times_us) / len(times_us)
    variance = max(sum(t * t for t in times_us) / len(times_us) - avg * avg, 0.0)
    return (f"count={len(times_us)} first={times_us[0]} curr={times_us[-1]} min={ordered[0]} "
            f"max={ordered[-1]} avg={avg:g} std={int(math.sqrt(variance))}{percentiles}")


def _average(times_us: list[int]) -> str:
    return f"{sum(times_us) / len(times_us):g}" if times_us else "nan"


def _run_phase(invoke: Callable[[], object], min_runs: int, min_secs: float, max_secs: float,
               delay_s: float) -> list[int]:
    _log(f"Running benchmark for at least {min_runs} iterations and at least {min_secs:g} seconds but "
         f"terminate if exceeding {max_secs:g} seconds.")
    times_us: list[int] = []
    start = time.perf_counter()
    while (len(times_us) < min_runs or time.perf_counter() - start < min_secs) and (
        time.perf_counter() - start <= max_secs
    ):
        begin = time.perf_counter_ns()
        invoke()
        times_us.append((time.perf_counter_ns() - begin) // 1000)
        if delay_s > 0:
            time.sleep(delay_s)
    _log(_stats_line(times_us) + "\n")
    return times_us


def main(argv: list[str]) -> int:
    values, given, unconsumed = _parse_flags(argv)
    _log("STARTING!")
    if unconsumed:
        return _fail(f"Unconsumed cmdline flags: {' '.join(unconsumed)}")
    _log(f"Log parameter values verbosely: [{int(bool(values['verbose']))}]")
    for name in given:
        value = values[name]
        shown = int(value) if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else value
        _log(f"{_FLAGS[name][2]}: [{shown}]")
    graph = values["graph"]
    if not graph:
        return _fail("Please specify the name of your TF Lite input file with --graph")
    if values["use_gpu"]:
        return _fail("GPU acceleration is unsupported on this platform.")
    if not os.path.isfile(graph):
        _fail(f"Could not open '{graph}'.")
        return _fail("Benchmarking failed.")
    memory_start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    threads = values["num_threads"]
    init_start = time.perf_counter_ns()
    interpreter = Interpreter(model_path=graph, num_threads=threads if threads > 0 else None)
    _log(f"Loaded model {graph}")
    interpreter.allocate_tensors()
    init_us = (time.perf_counter_ns() - init_start) // 1000
    if threads > 0:
        _log(f"#threads used for CPU inference: [{threads}]")
    _log(f"The input model file size (MB): {os.path.getsize(graph) / 1e6:g}")
    _log(f"Initialized session in {init_us / 1000:g}ms.")
    memory_init_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], rng.random(detail["shape"]).astype(detail["dtype"]))

    delay_s, max_secs = values["run_delay"], values["max_secs"]
    warmup = _run_phase(interpreter.invoke, values["warmup_runs"], values["warmup_min_secs"], max_secs, delay_s)
    timed = _run_phase(interpreter.invoke, values["num_runs"], values["min_secs"], max_secs, delay_s)
    first = warmup[0] if warmup else (timed[0] if timed else 0)
    _log(f"Inference timings in us: Init: {init_us}, First inference: {first}, Warmup (avg): "
         f"{_average(warmup)}, Inference (avg): {_average(timed)}")
    _log("Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to "
         "the actual memory footprint of the model at runtime. Take the information at your discretion.")
    memory_end_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _log(f"Memory footprint delta from the start of the tool (MB): init={(memory_init_kb - memory_start_kb) / 1024:g} "
         f"overall={(memory_end_kb - memory_start_kb) / 1024:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
