"""Deep Leakage from Gradients on our data, side by side: what leaks, and what stops it.

    .venv/bin/python bench/bench_privacy.py [--datasets digits,mnist-5k] [--networks lenet-sigmoid,searched]
                                            [--images N] [--iterations N] [--train-steps N] [--cost-steps N]

The paper's experiment (Zhu, Liu, Han 2019) on digits (8x8) and mnist-5k
(28x28), at batch 1 and 4, on two networks:

- "lenet-sigmoid": the paper's attack network (Sigmoid, weights uniform in
  [-0.5, 0.5]), untrained as in the reference;
- "searched": a network of the tiny space (ReLU6 + BatchNorm, what our jobs
  train), after a short training (--train-steps), eval-mode BatchNorm.

Per (dataset, network, batch): undefended PSNR / SSIM / labels recovered
(iDLG at batch 1, DLG's soft labels at batch 4); the pruning sweep and the
lowest sparsity at which no rebuild is recognisable (PSNR < 15 dB); DGC top 1%
and Gaussian noise; and each defense's accuracy cost: the searched network
trained --cost-steps SGD steps from the same start with the defense applied to
every gradient, minus the undefended run (DGC with its residual).
Seed claims: pixel-wise recovery at batch 1 and 8; pruning above ~30% defends;
noise only defends when accuracy drops.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from automl_server.datasets.bundled import _mnist_5k  # noqa: E402
from automl_server.engine.data import SplitData, split_arrays  # noqa: E402
from automl_server.engine.privacy.audit import RECOGNISABLE_PSNR_DB, AuditImages, Row, attack_gradients  # noqa: E402
from automl_server.engine.privacy.audit import short_training_accuracy  # noqa: E402
from automl_server.engine.privacy.defenses import Defense  # noqa: E402
from automl_server.engine.privacy.lenet import lenet_sigmoid  # noqa: E402
from automl_server.engine.privacy.settings import PrivacyAuditSettings  # noqa: E402
from search_spaces import Arch, build_model  # noqa: E402

SPARSITIES = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
VARIANCES = (1e-4, 1e-3, 1e-2, 1e-1)


def load(name: str) -> SplitData:
    if name == "digits":
        from sklearn.datasets import load_digits

        raw = load_digits()
        x, y = np.rint(raw.images * 255 / 16).astype(np.uint8)[..., None], raw.target
    elif name == "mnist-5k":
        pixels, labels = _mnist_5k()
        x, y = pixels.reshape(-1, 28, 28, 1).astype(np.uint8), labels
    else:
        raise SystemExit(f"unknown dataset {name!r}; accepted: digits, mnist-5k")
    return split_arrays(x, np.asarray(y, np.int64), seed=0)


def searched_network(data: SplitData, steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(Arch("tiny", data.resolution, data.num_classes, data.in_channels, ("mb3_k3",) * 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(data.y_train), (64,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(data.x_train[rows]), data.y_train[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def attack(model: torch.nn.Module, images: AuditImages, batch: int, count: int, defense: Defense | None,
           settings: PrivacyAuditSettings, smoothing: float) -> dict:
    row = Row(defense.name if defense else "undefended", defense.kind if defense else "none", None)
    for start in range(0, count, batch):
        idx = torch.arange(start, start + batch)
        attack_gradients(model, images, idx, defense, settings=settings, label_smoothing=smoothing,
                         train_mode=False, row=row, should_stop=lambda: False)
    return row.summary()


def fmt(summary: dict) -> str:
    return (f"PSNR {summary['psnr_db']:6.2f} dB  SSIM {summary['ssim']:6.3f}  recognisable "
            f"{summary['recognisable']:4.0%}  labels {summary['labels_recovered'] if summary['labels_recovered'] is None else format(summary['labels_recovered'], '4.0%')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="digits,mnist-5k")
    parser.add_argument("--images", type=int, default=4, help="images attacked per setting")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--cost-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--networks", default="lenet-sigmoid,searched")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = PrivacyAuditSettings(iterations=args.iterations)
    print(f"DLG: L-BFGS {args.iterations} iterations, {args.images} images per setting, recognisable = PSNR >= "
          f"{RECOGNISABLE_PSNR_DB} dB")
    for name in args.datasets.split(","):
        data = load(name)
        images = AuditImages(data.x_train, data.y_train, tuple(data.mean), tuple(data.std), data.num_classes)
        searched = searched_network(data, args.train_steps)
        networks = {"lenet-sigmoid": lenet_sigmoid(data.in_channels, data.resolution, data.num_classes),
                    "searched": searched}
        for net_name, model in ((n, networks[n]) for n in args.networks.split(",")):
            for batch in (1, 4):
                started = time.monotonic()
                base = attack(model, images, batch, args.images, None, settings, 0.0)
                print(f"\n{name} {net_name} batch {batch}: undefended  {fmt(base)}", flush=True)
                stop = None
                for sparsity in SPARSITIES:
                    pruned = attack(model, images, batch, args.images, Defense("prune", sparsity), settings, 0.0)
                    print(f"  pruning {sparsity:4.0%}: {fmt(pruned)}", flush=True)
                    if stop is None and pruned["recognisable"] == 0:
                        stop = sparsity
                print(f"  rebuilds stop being recognisable at pruning "
                      f"{'none of the sweep' if stop is None else format(stop, '.0%')}")
                for defense in [Defense("top_k", 0.01)] + [Defense("gaussian", v) for v in VARIANCES]:
                    print(f"  {defense.name}: {fmt(attack(model, images, batch, args.images, defense, settings, 0.0))}",
                          flush=True)
                print(f"  ({time.monotonic() - started:.0f} s)")
        if args.cost_steps:
            torch.manual_seed(0)
            start = build_model(Arch("tiny", data.resolution, data.num_classes, data.in_channels, ("mb3_k3",) * 8))
            x_eval, y_eval = data.x_holdout, data.y_holdout

            def accuracy(defense: Defense | None) -> float:
                return short_training_accuracy(start, data.x_train, data.y_train, x_eval, y_eval, defense,
                                               steps=args.cost_steps, batch_size=64, label_smoothing=0.1, seed=0)

            base_accuracy = accuracy(None)
            print(f"\n{name}: accuracy cost after {args.cost_steps} SGD steps of 64 images (searched network), "
                  f"undefended {base_accuracy:.3f}")
            for defense in ([Defense("prune", s) for s in SPARSITIES] + [Defense("top_k", 0.01)]
                            + [Defense("gaussian", v) for v in VARIANCES]):
                value = accuracy(defense)
                print(f"  {defense.name:24} accuracy {value:.3f}  cost {base_accuracy - value:+.3f}", flush=True)


if __name__ == "__main__":
    main()
