"""Does the supernet itself rate networks with skipped cells higher? (README, issue 17: RL on `tiny`
digits puts Zero first in every cell that offers it.)

Runs an RL search as ``probe_supernet_signal.py`` runs a job-sized one (its schedule, batch 64, an
architecture step every 2 weight steps, the arch lr of ``arch_lr_for``, the target 30% of the range
under a FLOPs latency model) and, after the warm-up and at the end, scores random paths of the
supernet two ways: as RL's reward sees them (BatchNorm in train mode on the whole holdout, one
forward) and as the search's derived path is judged (BatchNorm statistics recomputed on training
images). Prints, per number of Zero cells, the mean of each, and the correlation of Zero cells with
each score. Not a test: it prints what happens.

    .venv/bin/python bench/probe_rl_zero.py --paths 60
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

from automl_server.cli.engine_cmds import load_dataset
from automl_server.engine.data import split_arrays
from automl_server.engine.latency import FlopsLatencyModel
from automl_server.engine.search import ProxylessSearch, SearchConfig
from automl_server.engine.search_plan import latency_range_ms, schedule_for
from search_spaces import get_space
from search_spaces.ops import ZERO

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_supernet_signal import job_sized_settings  # noqa: E402


@torch.no_grad()
def reward_view_accuracy(search: ProxylessSearch) -> float:
    """Accuracy as engine/rl.py scores a sampled network: train-mode BatchNorm, the holdout as one batch."""
    search.net.train()
    x, y = search.data.x_holdout, search.data.y_holdout
    return float((search.net(x).argmax(1) == y).float().mean())


def score_paths(search: ProxylessSearch, paths: list[list[int]]) -> list[tuple[int, float, float]]:
    """(Zero cells, reward-view accuracy, recalibrated accuracy) per path; the search's state kept."""
    ops = search.net.mixed_ops
    saved = {k: v.clone() for k, v in search.net.state_dict().items()}
    rows = []
    search.net.set_mode("fixed")
    for path in paths:
        for op, index in zip(ops, path):
            op.active_index = index
        zeros = sum(op.candidates[i] == ZERO for op, i in zip(ops, path))
        reward_view = reward_view_accuracy(search)
        search.net.load_state_dict(saved)  # the train-mode forward moved the running statistics
        rows.append((zeros, reward_view, search._path_accuracy()))
    search.net.load_state_dict(saved)
    return rows


def random_paths(search: ProxylessSearch, count: int) -> list[list[int]]:
    """Paths with 0 to all-possible Zero cells in equal shares (a uniform draw per cell would give
    few with many), the Zero cells and the other cells' blocks drawn at random."""
    draw = random.Random(0)
    ops = search.net.mixed_ops
    can_skip = [i for i, op in enumerate(ops) if ZERO in op.candidates]
    paths = []
    for n in range(count):
        skipped = set(draw.sample(can_skip, n % (len(can_skip) + 1)))
        paths.append([op.candidates.index(ZERO) if i in skipped
                      else draw.choice([j for j, block in enumerate(op.candidates) if block != ZERO])
                      for i, op in enumerate(ops)])
    return paths


def report(label: str, rows: list[tuple[int, float, float]]) -> None:
    by_zeros: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for count, reward_view, recalibrated in rows:
        by_zeros[count].append((reward_view, recalibrated))
    zeros = [float(r[0]) for r in rows]
    print(f"{label}: correlation of Zero cells with reward-view accuracy "
          f"{statistics.correlation(zeros, [r[1] for r in rows]):+.2f}, with recalibrated accuracy "
          f"{statistics.correlation(zeros, [r[2] for r in rows]):+.2f}")
    for count in sorted(by_zeros):
        values = by_zeros[count]
        print(f"  {count} Zero cells ({len(values)} paths): reward view {statistics.mean(v[0] for v in values):.3f}, "
              f"recalibrated {statistics.mean(v[1] for v in values):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", choices=("digits", "mnist-5k"))
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--frac", type=float, default=0.3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--search", type=int, default=8)
    parser.add_argument("--paths", type=int, default=60, help="random paths scored at each point")
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y, _classes = load_dataset(args.dataset)
    data = split_arrays(x, y, seed=0)
    layout = get_space(args.space).layout(data.resolution, data.num_classes, data.in_channels)
    model = FlopsLatencyModel()
    fastest, slowest = latency_range_ms(layout, model)
    schedule = schedule_for(len(data.y_train), 64, args.warmup, args.search, 2)
    config = SearchConfig(**job_sized_settings(schedule, fastest + args.frac * (slowest - fastest)),
                          lr=0.05, strategy="rl")
    search = ProxylessSearch(layout, data, model, config)
    paths = random_paths(search, args.paths)
    print(f"{args.dataset} / {args.space}: {schedule.describe()}; {args.paths} random paths", flush=True)
    for epoch in range(config.total_epochs):
        search.run_epoch()
        if epoch + 1 in (config.warmup_epochs, config.total_epochs):
            report(f"after epoch {epoch + 1} ({'warm-up' if epoch + 1 == config.warmup_epochs else 'search'})",
                   score_paths(search, paths))
    top = [float(torch.softmax(op.alpha.detach(), 0).max()) for op in search.net.mixed_ops]
    print(f"RL's argmax at the end: {search.result().arch.blocks}; mean top probability {sum(top) / len(top):.3f}")


if __name__ == "__main__":
    main()
