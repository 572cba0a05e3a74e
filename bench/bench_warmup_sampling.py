"""Does the supernet learn on a small dataset? The warm-up's sampling side by side (issue 17).

On digits at 8 px (the engine's 80/20 split of all 1,797 images, batch 64), a
ProxylessNAS search of ``--space`` for each
warm-up setting, then the search epochs as a job runs them (architecture
steps every 2 weight steps, at least 10 per epoch, accuracy alone: no latency
term, so only the supernet's accuracy signal steers). Printed per setting:
held-out accuracy of random paths after the warm-up (what the search's
two-path steps compare), of the derived path after the warm-up and at the end
(BatchNorm recalibrated for that path, as the search reports it), and seconds.

    .venv/bin/python bench/bench_warmup_sampling.py
    .venv/bin/python bench/bench_warmup_sampling.py --settings uniform:10,progressive:45 --seeds 0,1

A setting is SAMPLING:WARMUP_EPOCHS (22 weight steps an epoch here); a job's
default is uniform:10 (the budget's 10 warm-up epochs; schedule_for adds none
at 16+ batches an epoch).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from automl_server.engine.data import split_arrays  # noqa: E402
from automl_server.engine.latency import FlopsLatencyModel  # noqa: E402
from automl_server.engine.search import ProxylessSearch, SearchConfig  # noqa: E402
from search_spaces import get_space  # noqa: E402


@torch.no_grad()
def random_path_accuracy(search: ProxylessSearch, draws: int = 8) -> float:
    """Held-out accuracy of uniformly random paths (batch statistics, as the weight steps see them)."""
    search.net.train()
    search.net.set_mode("random")
    generator = torch.Generator().manual_seed(99)
    x, y = search.data.x_holdout, search.data.y_holdout
    right = 0
    for _ in range(draws):
        search.net.sample(generator)
        right += int((search.net(x).argmax(1) == y).sum())
    return right / (draws * len(y))


def run(space: str, sampling: str, warmup_epochs: int, search_epochs: int, seed: int, data) -> dict[str, float]:  # type: ignore[no-untyped-def]
    layout = get_space(space).layout(data.resolution, data.num_classes, data.in_channels)
    config = SearchConfig(warmup_epochs=warmup_epochs, search_epochs=search_epochs, batch_size=64,
                          loss_kind="none", derive="argmax", arch_update_every=2, min_arch_steps_per_epoch=10,
                          arch_lr=3e-3, warmup_sampling=sampling, seed=seed)
    search = ProxylessSearch(layout, data, FlopsLatencyModel(), config)
    started = time.perf_counter()
    for _ in range(warmup_epochs):
        report = search.run_epoch()
    after_warmup = {"random_paths": random_path_accuracy(search), "derived_after_warmup": report.holdout_accuracy}
    for _ in range(search_epochs):
        report = search.run_epoch()
    return {**after_warmup, "derived_at_end": report.holdout_accuracy, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="proxyless-mobile")
    parser.add_argument("--settings", default="uniform:10,uniform:45,progressive:45")
    parser.add_argument("--search-epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    raw = load_digits()
    x = np.rint(raw.images * 255 / 16).astype(np.uint8)[..., None]
    data = split_arrays(x, raw.target.astype(np.int64), seed=0)
    print(f"digits 8 px: {len(data.y_train)} training, {len(data.y_holdout)} held-out images; space {args.space}")
    header = f"{'setting':18} {'seed':>4} {'random paths':>12} {'derived, warm-up':>16} {'derived, end':>12} {'s':>6}"
    print(header)
    rows: dict[str, list[dict[str, float]]] = {}
    for setting in args.settings.split(","):
        sampling, epochs = setting.split(":")
        for seed in (int(s) for s in args.seeds.split(",")):
            r = run(args.space, sampling, int(epochs), args.search_epochs, seed, data)
            rows.setdefault(setting, []).append(r)
            print(f"{setting:18} {seed:>4} {r['random_paths']:12.3f} {r['derived_after_warmup']:16.3f} "
                  f"{r['derived_at_end']:12.3f} {r['seconds']:6.0f}", flush=True)
    if len(args.seeds.split(",")) > 1:
        print("means:")
        for setting, values in rows.items():
            print(f"{setting:18} " + " ".join(f"{k} {statistics.mean(v[k] for v in values):.3f}"
                                             for k in ("random_paths", "derived_after_warmup", "derived_at_end")))


if __name__ == "__main__":
    main()
