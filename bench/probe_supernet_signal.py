"""How much does a job-sized search's supernet learn? (README, issue 17, "a supernet that learns".)

Runs ``ProxylessSearch`` as a job's search stage would (batch 64, one
architecture step every 2 weight steps, the arch lr of
``engine.search_plan.arch_lr_for``, the schedule of
``engine.search_plan.schedule_for`` for the asked-for epochs, the target 30%
of the space's range under a FLOPs latency model, derive=target in a 2% band)
and prints, per epoch, the training accuracy of the sampled paths and the
holdout accuracy of the derived path (BatchNorm recalibrated), then the final
figure and the derived blocks. Each positional argument is one run, written as
SearchConfig overrides in Python keyword syntax:

    .venv/bin/python bench/probe_supernet_signal.py "lr=0.05" "lr=0.05,zero_residual_gamma=False"
    .venv/bin/python bench/probe_supernet_signal.py --dataset mnist-5k "lr=0.025" "lr=0.05"
    .venv/bin/python bench/probe_supernet_signal.py --space proxyless-mobile --warmup 10 --search 30 "lr=0.05"

Not a test: it prints what happens; compare runs side by side. Figures in the
README from before 2026-12-06 06:00 UTC were printed at arch lr 3e-3 (a job's
rate then): add ``arch_lr=3e-3`` to a run to repeat them.
"""
from __future__ import annotations

import argparse
import ast
import time
from typing import Any

import torch

from automl_server.cli.engine_cmds import load_dataset
from automl_server.engine.data import split_arrays
from automl_server.engine.latency import FlopsLatencyModel
from automl_server.engine.search import ProxylessSearch, SearchConfig
from automl_server.engine.search_plan import SearchSchedule, arch_lr_for, latency_range_ms, schedule_for
from search_spaces import get_space


def overrides(text: str) -> dict[str, Any]:
    """'lr=0.05,zero_residual_gamma=False' -> {'lr': 0.05, 'zero_residual_gamma': False} (literals only)."""
    call = ast.parse(f"f({text})", mode="eval").body
    assert isinstance(call, ast.Call)
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}


def job_sized_settings(schedule: SearchSchedule, target_ms: float) -> dict[str, Any]:
    """SearchConfig values of a job's search stage for ``schedule`` (batch 64, an architecture step every
    2 weight steps, ``arch_lr_for``'s step size), deriving within 2% of ``target_ms``."""
    return dict(warmup_epochs=schedule.warmup_epochs, search_epochs=schedule.search_epochs,
                min_arch_steps_per_epoch=schedule.min_arch_steps_per_epoch, batch_size=64, target_ms=target_ms,
                derive="target", derive_tolerance=0.02, arch_update_every=2, arch_lr=arch_lr_for(schedule.arch_steps),
                seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", default=[""])
    parser.add_argument("--dataset", default="digits", choices=("digits", "mnist-5k"))
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--frac", type=float, default=0.3, help="target as a share of the space's range")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--search", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y, _classes = load_dataset(args.dataset)  # as `automl search` loads it
    data = split_arrays(x, y, seed=0)
    layout = get_space(args.space).layout(data.resolution, data.num_classes, data.in_channels)
    model = FlopsLatencyModel()
    fastest, slowest = latency_range_ms(layout, model)
    schedule = schedule_for(len(data.y_train), 64, args.warmup, args.search, 2)
    print(f"{args.dataset} / {args.space}: {len(data.y_train)} training images, {schedule.describe()}", flush=True)
    for run in args.runs:
        values = job_sized_settings(schedule, fastest + args.frac * (slowest - fastest))
        values.update(overrides(run))
        started = time.monotonic()
        search = ProxylessSearch(layout, data, model, SearchConfig(**values))
        epochs = []
        for _ in range(search.config.total_epochs):
            report = search.run_epoch()
            epochs.append(f"{report.train_accuracy:.2f}/{report.holdout_accuracy:.2f}")
        result = search.result()
        # How far the architecture moved: the mean over cells of the most probable candidate's
        # probability (1/candidates when nothing moved).
        top = [float(torch.softmax(op.alpha.detach(), 0).max()) for op in search.net.mixed_ops]
        uniform = sum(1 / len(op.candidates) for op in search.net.mixed_ops) / len(top)
        print(f"[{run or 'defaults'}] per epoch train/holdout: {' '.join(epochs)}; final holdout "
              f"{result.holdout_accuracy:.3f}; top probability per cell {sum(top) / len(top):.3f} (uniform "
              f"{uniform:.3f}, max {max(top):.3f}); {result.arch.blocks}; {time.monotonic() - started:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
