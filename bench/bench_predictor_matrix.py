"""The predictor over a matrix of settings (issue 18, part 2).

For each space x resolution x runtime: every op of the space is profiled into
a latency table (at the yardstick's pace, as the latency database keeps it),
then whole networks are timed **as the local agent times them**
(``device_agents.profiling.contention.measure_checked``: rounds with the
yardstick, one network at a time, the machine's cores lock taken, a noisy
measurement retaken and, if it stays noisy, flagged): calibration networks
sampled with one seed, held-out networks with another seed, never used in
fitting. The held-out networks are timed twice (a second pass after the
first): how often a network's two figures agree within 10% is the ceiling no
predictor can pass on these measurements.

Every figure is saved (``--save DIR``, one JSON per cell: the table, each
network's keys, its figures and their evidence), and the scoring is a second
step (``--analyse DIR``) so that predictors are compared on the same
measurements. For each calibration size, each predictor variant is fitted on
the cell's first N usable calibration networks (flagged ones never
calibrate, as in the service) and scored on the held-out ones (their first
figure): share within +-5% and +-10%, relative RMSE, Kendall's tau, worst.

    .venv/bin/python bench/bench_predictor_matrix.py --save runs/quiet2s --spaces proxyless-mobile \\
        --resolutions 8,28,32,64 --runtimes onnxruntime,pytorch,litert --calibration 8,16,32 \\
        --held-out 20 --min-seconds 2.0 [--beside-training locked|unlocked]
    .venv/bin/python bench/bench_predictor_matrix.py --analyse runs/quiet2s --calibration 8,16,32 \\
        --variants calibrated,per-block-type

(2.0 s per network is the service's ``AUTOML_NETWORK_MEASURE_S``.)

``--beside-training locked`` runs a training process (a searched-size
network trained on digits, as the search stage trains) the whole time, which
pauses at each weight step while a measurement holds the cores lock
(``device_agents.cores``), as on ``automl serve``; ``unlocked`` runs it
without the lock (what the embedded default did before the lock).

The goal (issue 18): at least 95% of held-out networks within 10% in every cell.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from device_agents import cores  # noqa: E402
from device_agents.profiling import MeasurementMethod, NetworkToTime, build_from_key, get_backend  # noqa: E402
from device_agents.profiling import measure_networks  # noqa: E402
from device_agents.profiling.contention import measure_checked  # noqa: E402
from latency_db import MeasurementStats, at_pace, kendall_tau, within_pct  # noqa: E402
from latency_db import yardstick_ms as yardstick_of  # noqa: E402
from latency_db import CalibrationError, LatencyPredictor, OpKey, fit_calibration, parse_key  # noqa: E402
from latency_db.keys import EXPANDED_CONV  # noqa: E402
from search_spaces import Arch, arch_keys, build_model, get_space, sample_archs, space_keys  # noqa: E402

BACKENDS = {"onnxruntime": "onnxruntime", "pytorch": "torch", "litert": "litert"}
CALIBRATION_SEED, HELD_OUT_SEED = 101, 202  # never the seeds the search or the jobs use

Predict = Callable[[list[str]], float]


def lut_sum_predictor(lut: dict[str, float], fitted: list[tuple[list[str], float]]) -> Predict:
    """The plain sum of the table's op latencies."""
    return LatencyPredictor(lut).predict


def calibrated_predictor(lut: dict[str, float], fitted: list[tuple[list[str], float]]) -> Predict:
    """The service's predictor: the LUT sum calibrated on whole networks (``fit_calibration``)."""
    plain = LatencyPredictor(lut)
    calibration = fit_calibration([(plain.lut_sum(keys), len(keys), ms) for keys, ms in fitted])
    return LatencyPredictor(lut, calibration).predict


def block_type(key: str) -> str:
    """The op's type for ``per-block-type``: an MBConv block by expansion and kernel; the fixed layers as one."""
    op = parse_key(key)
    return f"e{op.expand}k{op.kernel}" if isinstance(op, OpKey) and op.kind == EXPANDED_CONV else "fixed"


def per_block_type_predictor(lut: dict[str, float], fitted: list[tuple[list[str], float]]) -> Predict:
    """nn-Meter's kernel-level view, simplified: one scale per block type (the LUT sum of each
    type's ops), plus the per-op and fixed terms, least squares on relative error as
    ``fit_calibration``."""
    def type_sums(keys: list[str]) -> dict[str, float]:
        sums: dict[str, float] = {}
        for key in keys:
            sums[block_type(key)] = sums.get(block_type(key), 0.0) + lut[key]
        return sums

    # A type whose sum is the same in every fitted network (the fixed layers, a cell
    # without choice) cannot be told apart from the fixed term: it is left to it.
    seen = [type_sums(keys) for keys, _ in fitted]
    types = sorted(t for t in {t for sums in seen for t in sums}
                   if len({round(sums.get(t, 0.0), 12) for sums in seen}) > 1)

    def features(keys: list[str]) -> list[float]:
        sums = type_sums(keys)
        return [*(sums.get(t, 0.0) for t in types), float(len(keys)), 1.0]

    design = np.asarray([features(keys) for keys, _ in fitted])
    measured = np.asarray([ms for _, ms in fitted])
    weighted = design / measured[:, None]
    if len(fitted) < design.shape[1] or np.linalg.matrix_rank(weighted) < design.shape[1]:
        raise CalibrationError(f"{len(fitted)} networks cannot fit {design.shape[1]} terms")
    solution = np.linalg.lstsq(weighted, np.ones(len(fitted)), rcond=None)[0]
    return lambda keys: max(0.0, float(np.asarray(features(keys)) @ solution))


VARIANTS: dict[str, Callable[[dict[str, float], list[tuple[list[str], float]]], Predict]] = {
    "calibrated": calibrated_predictor, "lut-sum": lut_sum_predictor, "per-block-type": per_block_type_predictor}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spaces", default="tiny,proxyless-mobile")
    parser.add_argument("--resolutions", default="8,32")
    parser.add_argument("--runtimes", default="onnxruntime,pytorch")
    parser.add_argument("--calibration", default="8,16,32", help="calibration sizes (networks fitted on)")
    parser.add_argument("--held-out", type=int, default=12)
    parser.add_argument("--min-seconds", type=float, default=1.0, help="each whole network's measurement spans this")
    parser.add_argument("--beside-training", choices=("none", "locked", "unlocked"), default="none")
    parser.add_argument("--save", type=Path, help="measure, and save each cell's figures here")
    parser.add_argument("--analyse", type=Path, help="score the predictors on the figures saved in this folder")
    parser.add_argument("--variants", default="calibrated", help=f"predictors to score ({', '.join(VARIANTS)})")
    parser.add_argument("--train-forever", action="store_true", help=argparse.SUPPRESS)  # the trainer process
    args = parser.parse_args()
    if args.train_forever:
        train_forever()
        return
    sizes = [int(n) for n in args.calibration.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; accepted: {', '.join(VARIANTS)}")
    if args.save is None and args.analyse is None:
        parser.error("give --save DIR (measure) and/or --analyse DIR (score)")
    if args.save is not None:
        measure_all(args, sizes)
    folder = args.analyse or args.save
    analyse(folder, sizes, variants)


# ---------------------------------------------------------------- measuring


def measure_all(args: argparse.Namespace, sizes: list[int]) -> None:
    args.save.mkdir(parents=True, exist_ok=True)
    trainer = start_trainer(args.beside_training)
    try:
        for space in args.spaces.split(","):
            for resolution in (int(r) for r in args.resolutions.split(",")):
                for runtime in args.runtimes.split(","):
                    data = measure_cell(space, resolution, runtime, max(sizes), args.held_out, args.min_seconds)
                    data["beside_training"] = args.beside_training
                    path = args.save / f"{space}-{resolution}-{runtime}.json"
                    path.write_text(json.dumps(data, indent=1))
                    print(f"saved {path} ({data['seconds']:.0f} s, load {data['load_start']} -> "
                          f"{data['load_end']})", flush=True)
    finally:
        stop_trainer(trainer)


def measure_cell(space: str, resolution: int, runtime: str, n_fit: int, held_out: int,
                 min_seconds: float) -> dict[str, Any]:
    started = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    backend = get_backend(BACKENDS[runtime])
    op_method = MeasurementMethod(threads=1)
    net_method = MeasurementMethod(threads=1, min_seconds=min_seconds)
    layout = get_space(space).layout(resolution, 10, 3)
    pace: list[float] = []

    def paced(stats: MeasurementStats) -> float:
        if not pace:
            first = yardstick_of(stats)
            if first is None:
                raise SystemExit(f"runtime {runtime} ran no yardstick")
            pace.append(first)
        return at_pace(stats, pace[0]).median_ms

    lut, ops_flagged = {}, 0
    for key in space_keys(layout):
        module, shape = build_from_key(key)
        stats = measure_checked(lambda: backend.measure_module(module, shape, op_method), op_method)
        lut[key] = paced(stats)
        ops_flagged += stats.method.get("reliable") is False

    def timed(arch: Arch) -> dict[str, Any]:
        network = NetworkToTime(build_model(arch).eval(), (1, 3, resolution, resolution))

        def take() -> MeasurementStats:
            (result,) = measure_networks(backend, [network], net_method)
            if isinstance(result, Exception):
                raise result
            return result

        stats = measure_checked(take, net_method)
        return {"ms": paced(stats), "clock_ms": stats.median_ms, "cv": round(stats.cv, 4),
                "reliable": stats.method.get("reliable") is not False,
                "reason": stats.method.get("unreliable_reason"), "attempts": stats.method.get("attempts"),
                "yardstick_drift": stats.method.get("yardstick_drift"),
                "cores_waited_s": stats.method.get("cores_waited_s")}

    def entry(arch: Arch, role: str) -> dict[str, Any]:
        return {"role": role, "arch": arch.to_dict(), "keys": arch_keys(arch), **timed(arch)}

    networks = [entry(a, "fit") for a in sample_archs(space, n_fit, CALIBRATION_SEED, resolution, 10, 3)]
    tests = [entry(a, "test") for a in sample_archs(space, held_out, HELD_OUT_SEED, resolution, 10, 3)]
    for test in tests:  # the second pass: how far a network's own figures move
        test["repeat"] = timed(Arch.from_dict(test["arch"]))
    return {"space": space, "resolution": resolution, "runtime": runtime, "min_seconds": min_seconds,
            "lut": lut, "ops_flagged": ops_flagged, "networks": networks + tests,
            "seconds": time.perf_counter() - started, "load_start": load_start,
            "load_end": [round(x, 2) for x in os.getloadavg()]}


def start_trainer(mode: str) -> subprocess.Popen[bytes] | None:
    """The training process beside the measurements (``--beside-training``)."""
    if mode == "none":
        return None
    env = dict(os.environ)
    if mode == "locked":
        lock = Path(tempfile.mkdtemp(prefix="bench-cores-")) / "cores.lock"
        os.environ[cores.CORES_LOCK_ENV] = env[cores.CORES_LOCK_ENV] = str(lock)  # this process measures with it
    else:
        env.pop(cores.CORES_LOCK_ENV, None)
    process = subprocess.Popen([sys.executable, __file__, "--train-forever"], env=env)
    time.sleep(5)  # let it reach its training loop before the first measurement
    return process


def stop_trainer(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        process.terminate()
        process.wait(timeout=30)


def train_forever() -> None:
    """A search-sized network trained on digits with SGD until killed; each weight
    step is a ``cores.Training.step()`` (which pauses for measurements when the lock is set)."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1).repeat(1, 3, 4, 4) / 16.0  # 32 px
    labels = torch.tensor(digits.target)
    (arch,) = sample_archs("proxyless-mobile", 1, 7, 32, 10, 3)
    model = build_model(arch).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps = 0
    with cores.Training() as share:
        while True:
            for start in range(0, len(labels), 64):
                share.step()
                optimiser.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(images[start:start + 64]), labels[start:start + 64])
                loss.backward()
                optimiser.step()
                steps += 1
            print(f"trainer: {steps} steps, paused {share.pauses} times ({share.paused_s:.0f} s)", flush=True)


# ---------------------------------------------------------------- scoring


def analyse(folder: Path, sizes: list[int], variants: list[str]) -> None:
    """One row per cell and predictor: the share within 10% for each calibration size,
    the other figures for the largest size the cell has networks for."""
    cells = sorted((json.loads(p.read_text()) for p in folder.glob("*.json")),
                   key=lambda c: (c["space"], c["resolution"], list(BACKENDS).index(c["runtime"])))
    if not cells:
        raise SystemExit(f"no cell figures (*.json) in {folder}")
    per_size = " / ".join(str(n) for n in sizes)
    print(f"| space | px | runtime | predictor | within 10% ({per_size} networks) | within 5% | rel. RMSE | "
          "Kendall tau | worst | repeat within 10% | flagged (fit / held-out) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for cell in cells:
        for line in score_cell(cell, sizes, variants):
            print(line)
    loads = [x for c in cells for x in (c["load_start"][0], c["load_end"][0])]
    print(f"\n{len(cells)} cells, beside training: {sorted({c.get('beside_training', 'none') for c in cells})}; "
          f"load average (1 min) {min(loads):.2f}-{max(loads):.2f}; measuring took "
          f"{sum(c['seconds'] for c in cells) / 60:.0f} min; ops flagged noisy: "
          f"{sum(c['ops_flagged'] for c in cells)} of {sum(len(c['lut']) for c in cells)}; within 5%, RMSE, "
          f"tau and worst with the largest calibration size")


def score_cell(cell: dict[str, Any], sizes: list[int], variants: list[str]) -> list[str]:
    lut = cell["lut"]
    fit = [n for n in cell["networks"] if n["role"] == "fit"]
    tests = [n for n in cell["networks"] if n["role"] == "test"]
    truth = np.asarray([n["ms"] for n in tests])
    repeat = [n["repeat"]["ms"] for n in tests if "repeat" in n]
    repeat_share = f"{within_pct(repeat, truth[:len(repeat)], 10):.0%}" if repeat else "-"
    flagged = f"{sum(not n['reliable'] for n in fit)} / {sum(not n['reliable'] for n in tests)}"
    usable = [n for n in fit if n["reliable"]]  # flagged networks never calibrate, as in the service
    lines = []
    for variant in variants:
        shares: list[str] = []
        failed: list[str] = []
        predicted = truth
        for size in sizes:
            if size > len(usable) and shares:
                shares.append("-")
                continue
            chosen = usable[:size]
            model: Predict
            try:
                model = VARIANTS[variant](lut, [(n["keys"], n["ms"]) for n in chosen])
            except CalibrationError:  # a failed fit: the service then predicts the LUT sum
                model = VARIANTS["lut-sum"](lut, [])
                failed.append(str(size))
            predicted = np.asarray([model(n["keys"]) for n in tests])
            shares.append(f"{within_pct(predicted, truth, 10):.0%}")
        errors = (predicted - truth) / truth
        label = variant + (f" (fit failed with {', '.join(failed)}: LUT sum)" if failed else "")
        lines.append(f"| {cell['space']} | {cell['resolution']} | {cell['runtime']} | {label} | {' / '.join(shares)} | "
                     f"{within_pct(predicted, truth, 5):.0%} | {math.sqrt(float(np.mean(errors ** 2))):.3f} | "
                     f"{kendall_tau(predicted, truth):.2f} | {float(np.max(np.abs(errors))):.0%} | "
                     f"{repeat_share} | {flagged} |")
    return lines


if __name__ == "__main__":
    main()
