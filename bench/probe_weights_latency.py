"""Does training change a network's latency? Two ONNX files of one architecture (a job's
``baseline-<method>-fit-<n>/model.onnx``, untrained, and ``baseline-<method>/model.onnx``,
trained) timed side by side in one process, interleaved round by round, one thread, with
ONNX Runtime's flush-to-zero of denormals off and on: a difference that survives the
interleaving is the weights' (denormal arithmetic), not the machine's pace.

    .venv/bin/python bench/probe_weights_latency.py UNTRAINED.onnx TRAINED.onnx [--rounds 15 --runs 200]

Prints each file's median and fastest round (ms per run) with and without flush-to-zero.
Nothing here is a test.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(path: Path, flush_to_zero: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    if flush_to_zero:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs=2, help="two ONNX files of one architecture")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=200, help="runs timed per round (after 20 warm-up runs)")
    args = parser.parse_args()
    sessions = {(path, ftz): session(path, ftz) for path in args.files for ftz in (False, True)}
    first = next(iter(sessions.values())).get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in first.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    times: dict[tuple[Path, bool], list[float]] = {key: [] for key in sessions}
    for _ in range(args.rounds):
        for key, sess in sessions.items():
            for _ in range(20):
                sess.run(None, {first.name: x})
            began = time.perf_counter()
            for _ in range(args.runs):
                sess.run(None, {first.name: x})
            times[key].append((time.perf_counter() - began) / args.runs * 1000)
    for (path, ftz), values in times.items():
        print(f"{path}  flush-to-zero {'on ' if ftz else 'off'}  median {statistics.median(values):.4f} ms  "
              f"fastest {min(values):.4f} ms")


if __name__ == "__main__":
    main()
