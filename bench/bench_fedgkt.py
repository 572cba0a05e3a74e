"""FedGKT vs FedAvg side by side in one run: the edge's cost and what it buys.

    .venv/bin/python bench/bench_fedgkt.py [--dataset mnist-5k|digits] [--rounds N] [--samples N]

4 clients, Dirichlet(0.5), the same partition, rounds and epochs for all three:
FedGKT through Flower's deployment engine (SuperLink + SuperNodes on loopback),
FedAvg with the server-size model (extractor + server model) on the edge, and
FedAvg with the searched model alone. Prints edge MACs and parameter ratios,
accuracies, the accuracy gap, bytes per round and wall time. Seed figures
(the paper): 9-17x fewer edge FLOPs, 54-105x fewer edge parameters than
FedAvg with the large model, at comparable accuracy.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from automl_server.datasets.bundled import _mnist_5k  # noqa: E402
from automl_server.engine.data import split_arrays  # noqa: E402
from automl_server.engine.train.fedgkt.pipeline import FedGKTSettings  # noqa: E402
from automl_server.engine.train.registry import PipelineInputs, get_pipeline  # noqa: E402
from search_spaces import Arch, build_model  # noqa: E402


class PrintingCallbacks:
    def progress(self, fraction: float, message: str, *, eta_s: float | None = None, **data: Any) -> None:
        print(f"  [{fraction:4.0%}] {message}", flush=True)

    def metric(self, message: str, **data: Any) -> None:
        pass

    def log(self, message: str, **data: Any) -> None:
        print(f"  {message}", flush=True)

    def check_cancelled(self) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def store_artifact(self, kind: str, path: Path) -> None:
        pass


def load(dataset: str, samples: int) -> tuple[np.ndarray, np.ndarray]:
    if dataset == "digits":
        from sklearn.datasets import load_digits

        raw = load_digits()
        x, y = np.rint(raw.images * 255 / 16).astype(np.uint8)[..., None], raw.target.astype(np.int64)
    else:
        pixels, y = _mnist_5k()
        x = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    return x[:samples], y[:samples]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", choices=("mnist-5k", "digits"), default="mnist-5k")
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = load(args.dataset, args.samples)
    data = split_arrays(x, y, seed=0)
    test = split_arrays(x, y, seed=0)
    arch = Arch("tiny", data.resolution, data.num_classes, data.in_channels, ("mb3_k3",) * 8)
    torch.manual_seed(0)
    pipeline = get_pipeline("fedgkt")
    settings = pipeline.parse({"clients": args.clients, "partition": "dirichlet", "dirichlet_alpha": 0.5,
                               "rounds": args.rounds})
    assert isinstance(settings, FedGKTSettings)
    with tempfile.TemporaryDirectory(prefix="bench_fedgkt_") as work_dir:
        inputs = PipelineInputs(arch, build_model(arch), data, test.x_holdout, test.y_holdout, epochs=1,
                                batch_size=64, seed=0, work_dir=Path(work_dir))
        started = time.monotonic()
        outcome = pipeline.run(inputs, settings, PrintingCallbacks())
        total_s = time.monotonic() - started
    r = outcome.report
    large, small = r["fedavg"]["server_size_model"], r["fedavg"]["searched_model"]
    fedgkt_s = sum(row["round_wall_s"] for row in outcome.history)
    up = np.mean([row["bytes_up"] for row in outcome.history])
    down = np.mean([row["bytes_down"] for row in outcome.history])
    print(f"\nFedGKT vs FedAvg: {args.dataset} ({args.samples} images, {len(data.y_train)} training, "
          f"{len(data.y_holdout)} evaluated), {args.clients} clients, Dirichlet(0.5), "
          f"{args.rounds} rounds x {r['client_epochs']} client epoch(s), "
          f"{settings.server_epochs} server epochs, "
          f"tiny space at {data.resolution}px, cut after stage {r['cut']}; server model ResNet-"
          f"{6 * settings.server_depth_mult + 2}-style over H, {settings.server_width_mult}x H's channels")
    print(f"{'':34}{'edge MACs':>12}{'edge params':>13}{'accuracy':>10}{'bytes/round':>14}{'wall s':>9}")
    print(f"{'FedGKT (edge = searched model)':34}{r['edge_macs']:>12,}{r['edge_params']:>13,}"
          f"{r['edge_accuracy']:>10.3f}{up + down:>14,.0f}{fedgkt_s:>9.1f}")
    print(f"{'  FedGKT server model on H':34}{r['server_macs']:>12,}{r['server_params']:>13,}"
          f"{r['server_accuracy']:>10.3f}")
    print(f"{'FedAvg, server-size model':34}{r['server_size_model_macs']:>12,}{r['server_size_model_params']:>13,}"
          f"{large['accuracy']:>10.3f}{large['bytes_per_round']:>14,}{large['wall_s']:>9.1f}")
    print(f"{'FedAvg, searched model':34}{r['edge_macs']:>12,}{r['edge_params']:>13,}"
          f"{small['accuracy']:>10.3f}{small['bytes_per_round']:>14,}{small['wall_s']:>9.1f}")
    print(f"\nedge MACs ratio (server-size / FedGKT edge): {r['macs_ratio']:.1f}x   (paper 9-17x, goal >= 9x)")
    print(f"edge params ratio:                             {r['params_ratio']:.1f}x   (paper 54-105x, goal >= 50x)")
    # The paper's accuracy is the server model's on the clients' features (FedML's GKTServerTrainer
    # evaluates the server model on the test features each client extracts); the edge model alone is ours.
    print(f"accuracy gap, FedGKT server model on edge H (the paper's figure) - FedAvg server-size: "
          f"{100 * (r['server_accuracy'] - large['accuracy']):+.1f} points (goal: within 1)")
    print(f"accuracy gap, FedGKT edge alone (mean over clients) - FedAvg server-size: "
          f"{100 * (r['edge_accuracy'] - large['accuracy']):+.1f} points; - FedAvg searched: "
          f"{100 * (r['edge_accuracy'] - small['accuracy']):+.1f} points")
    print(f"bytes per round: FedGKT {up:,.0f} up + {down:,.0f} down; FedAvg server-size "
          f"{large['bytes_per_round']:,}; FedAvg searched {small['bytes_per_round']:,}")
    print(f"whole bench {total_s:.0f} s (FedGKT rounds {fedgkt_s:.0f} s incl. Flower's per-message process start)")


if __name__ == "__main__":
    main()
