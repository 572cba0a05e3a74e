"""Does the search earn its keep? Searched vs. random search vs. a uniform network (issue 17).

At one latency target on one device (this machine's CPU, PyTorch, batch 1,
one thread), with the same training budget for every final network:

- searched: the gradient strategy (binarized two-path gates) with the job's
  settings (target band derivation, schedule from the dataset's size), the
  derived network then trained for ``--train-epochs``;
- random: networks sampled uniformly from the space that are predicted
  within the target, ``N`` of them trained briefly (``--brief-epochs`` each),
  ``N`` set so that they cost the search's wall time (at least 3, at most 30),
  the best on holdout then trained fully;
- uniform: a MobileNetV2-style network of the space, one block type in every
  cell, scaled in depth (Zero cells, the most expensive first) to fit the
  target; the block type whose network is predicted closest under the target
  is taken.

Both come from ``automl_server/engine/baselines.py``, the code a job's
``baselines`` stage runs.

Each final network's test accuracy (a test split no search saw), its
*measured* latency (median of interleaved timings), and the search cost
(wall seconds before the final training). Mean and spread over seeds.

    .venv/bin/python bench/bench_search_quality.py --dataset digits --space tiny --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from automl_server.cli.engine_cmds import load_dataset
from automl_server.engine.data import SplitData, split_arrays, stratified_split
from automl_server.engine import baselines
from automl_server.engine.latency import FlopsLatencyModel, LatencyModel
from automl_server.engine.search import SearchConfig, run_search
from automl_server.engine.search_plan import arch_lr_for, latency_range_ms, loss_kind_for, schedule_for
from automl_server.engine.train.standard import StandardConfig, evaluate, train_standard
from automl_server.jobs.margin import band_for
from search_spaces import Arch, SpaceLayout, build_model, get_space


@dataclass
class Outcome:
    method: str
    arch: Arch
    predicted_ms: float
    cost_s: float
    test_accuracy: float = 0.0
    measured_ms: float = 0.0


def splits(name: str, seed: int) -> tuple[SplitData, torch.Tensor, torch.Tensor]:
    """Train / holdout for the search and a 20% test split nobody sees before the end."""
    x, y, _classes = load_dataset(name)
    rest, test = stratified_split(y, holdout=0.2, seed=seed)
    train_sub, holdout_sub = stratified_split(y[rest], holdout=0.25, seed=seed + 1)
    data = split_arrays(x, y, train_idx=rest[train_sub], holdout_idx=rest[holdout_sub])
    return data, data.normalise(x[test]), torch.as_tensor(y[test])


def train_and_test(arch: Arch, data: SplitData, x_test: torch.Tensor, y_test: torch.Tensor, epochs: int,
                   seed: int) -> tuple[float, float]:
    """(holdout accuracy, test accuracy) after ``epochs`` of the standard pipeline."""
    torch.manual_seed(seed)
    model = build_model(arch)
    result = train_standard(model, data, StandardConfig(epochs=epochs, seed=seed))
    return float(result.history[-1]["holdout_accuracy"]), evaluate(model, x_test, y_test)


def searched(layout: SpaceLayout, data: SplitData, model: LatencyModel, target_ms: float, fastest: float,
             slowest: float, args: argparse.Namespace, seed: int) -> Outcome:
    plan = schedule_for(len(data.y_train), 64, args.warmup, args.epochs, 2)
    band = band_for(target_ms, 0.05)
    config = SearchConfig(warmup_epochs=plan.warmup_epochs, search_epochs=plan.search_epochs,
                          min_arch_steps_per_epoch=plan.min_arch_steps_per_epoch, arch_update_every=2,
                          arch_lr=arch_lr_for(plan.arch_steps), batch_size=64,
                          # aim as a job does (jobs/margin.band_for, 5% margin): the derived
                          # network's band, aim * (1 +- tolerance), ends 5% under the target, never over it
                          target_ms=band.aim_ms, loss_kind=loss_kind_for(band.aim_ms, fastest, slowest),
                          derive="target", derive_tolerance=band.tolerance, seed=seed)
    started = time.perf_counter()
    result = run_search(layout, data, model, config)
    return Outcome("searched", result.arch, result.expected_latency_ms, time.perf_counter() - started)


def random_search(layout: SpaceLayout, data: SplitData, model: LatencyModel, target_ms: float, budget_s: float,
                  args: argparse.Namespace, seed: int) -> Outcome:
    """The engine's random search (engine/baselines.py), as a job's baselines stage runs it."""
    found = baselines.random_search(layout, data, model, target_ms, budget_s=budget_s,
                                    brief_epochs=args.brief_epochs, seed=seed, max_networks=30)
    if found is None:
        raise SystemExit(f"no sampled network meets {target_ms:.3f} ms; pick a looser target")
    return Outcome(f"random (N={found.networks})", found.best.arch, found.best.predicted_ms, found.cost_s)


def uniform(layout: SpaceLayout, model: LatencyModel, target_ms: float) -> Outcome:
    """The engine's uniform network (engine/baselines.py): one block type everywhere, scaled in depth by Zero cells."""
    found = baselines.uniform_network(layout, model, target_ms)
    if found is None:
        raise SystemExit(f"no uniform network meets {target_ms:.3f} ms")
    return Outcome("uniform", found.arch, found.predicted_ms, 0.0)


def measured_ms(archs: list[Arch], repeats: int = 30) -> list[float]:
    """Median batch-1 forward time of each, interleaved so that load hits all alike."""
    torch.set_num_threads(1)
    models = [build_model(a).eval() for a in archs]
    x = torch.randn(1, archs[0].in_channels, archs[0].resolution, archs[0].resolution)
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for m in models:
            for _ in range(5):
                m(x)
        for _ in range(repeats):
            for i, m in enumerate(models):
                start = time.perf_counter()
                m(x)
                times[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.6],
                        help="targets as fractions of the space's predicted latency range")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--brief-epochs", type=int, default=2)
    parser.add_argument("--train-epochs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = FlopsLatencyModel()
    rows: dict[tuple[float, str], list[Outcome]] = {}
    for seed in args.seeds:
        data, x_test, y_test = splits(args.dataset, seed)
        layout = get_space(args.space).layout(data.resolution, data.num_classes, data.in_channels)
        fastest, slowest = latency_range_ms(layout, model)
        for fraction in args.fractions:
            target = fastest + fraction * (slowest - fastest)
            found = searched(layout, data, model, target, fastest, slowest, args, seed)
            outcomes = [found, random_search(layout, data, model, target, found.cost_s, args, seed),
                        uniform(layout, model, target)]
            for outcome in outcomes:
                _, outcome.test_accuracy = train_and_test(outcome.arch, data, x_test, y_test, args.train_epochs,
                                                          seed)
            for outcome, ms in zip(outcomes, measured_ms([o.arch for o in outcomes])):
                outcome.measured_ms = ms
                rows.setdefault((fraction, outcome.method.split(" ")[0]), []).append(outcome)
                print(f"seed {seed} target {target:.3f} ms ({fraction:.0%}): {outcome.method:14s} "
                      f"predicted {outcome.predicted_ms:.3f} ms, measured {ms:.3f} ms, test acc "
                      f"{outcome.test_accuracy:.3f}, search cost {outcome.cost_s:.0f} s: {' '.join(outcome.arch.blocks)}",
                      flush=True)
    print(f"\n{args.dataset}, {args.space}, seeds {args.seeds}, final training {args.train_epochs} epochs each; "
          "mean (min-max) over seeds")
    print("| target | method | test accuracy | predicted ms | measured ms | search cost s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (fraction, method), outs in rows.items():
        def spread(values: list[float], fmt: str) -> str:
            return f"{np.mean(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"
        print(f"| {fraction:.0%} of range | {method} | {spread([o.test_accuracy for o in outs], '.3f')} | "
              f"{spread([o.predicted_ms for o in outs], '.3f')} | {spread([o.measured_ms for o in outs], '.3f')} | "
              f"{spread([o.cost_s for o in outs], '.0f')} |")


if __name__ == "__main__":
    main()
