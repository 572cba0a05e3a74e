"""Sparse update (TTE) side by side, in one run: training memory of full update,
last layer only and a sparse scheme, with and without operator reordering;
time per step; accuracy after equal epochs on a transfer task.

Memory is printed three ways: the sum the budget counts (saved for backward +
every gradient + optimizer state), the peak of tensor bytes alive at once
during the step (live_memory.py; with the gradients held at that moment), and
the peak resident memory the step adds in a fresh process.

    .venv/bin/python bench/bench_sparse_update.py [--resolution 128] [--batch 1] [--epochs 6]

Memory/time: a proxyless-mobile network at --resolution px, the scheme being the
reference's MobileNetV2 recipe (biases of the last third of the conv layers,
first-pointwise weights of the last six blocks at ratios 1,1,1,1/4,1/4,1/4;
tiny-training ``_get_nelem_curve``). Accuracy: the job's size (space 'tiny',
digits 8 px): pretrain on digits 0-4, fine-tune on 5-9 for the same epochs with
full update, last layer only, and the scheme chosen by contribution analysis +
evolutionary search under --budget-kb.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from automl_server.engine.data import split_arrays
from automl_server.engine.train import StandardConfig, evaluate, train_standard
from automl_server.engine.train.sparse_update.comparison import comparison_variants, memory_comparison
from automl_server.engine.train.sparse_update.network import SparseNet
from automl_server.engine.train.sparse_update.peak_rss import Variant, measure_peak_rss_kb
from automl_server.engine.train.sparse_update.scheme import SparseScheme, classifier_only, full
from automl_server.engine.train.sparse_update.selection import choose_scheme
from automl_server.engine.train.sparse_update.training import FineTuneConfig, fine_tune
from automl_server.engine.train.sparse_update.updater import SparseUpdater
from search_spaces import Arch, build_model
from search_spaces.catalog import PROXYLESS_CANDIDATES  # noqa: F401  (registers the spaces)

MOBILE_BLOCKS = ("mb6_k5", "mb3_k3", "mb3_k3", "mb3_k3", "mb6_k5", "mb3_k5", "mb3_k5", "mb3_k3", "mb6_k7", "mb3_k5",
                 "mb3_k5", "mb3_k5", "mb6_k5", "mb3_k5", "mb3_k5", "mb3_k5", "mb6_k7", "mb6_k7", "mb3_k7", "mb3_k7",
                 "mb6_k7")


def reference_scheme(net: SparseNet) -> SparseScheme:
    n = len(net.layers)
    pw1 = [info.index for info in net.infos if info.name.endswith("inverted_bottleneck")][-6:]
    return SparseScheme(n // 3, tuple(zip(pw1, (1.0, 1.0, 1.0, 0.25, 0.25, 0.25))), kind="reference-recipe")


def time_per_step_ms(net: SparseNet, variant: Variant, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    trial = copy.deepcopy(net)
    trial.apply_scheme(variant.scheme, plain_autograd=variant.plain_autograd)
    updater = SparseUpdater(trial.trainable_parameters(), lr=0.01, reorder=variant.reorder)
    updater.step(F.cross_entropy(trial(x), y))  # warm-up
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        updater.step(F.cross_entropy(trial(x), y))
        times.append((time.perf_counter() - started) * 1000)
    updater.close()
    return statistics.median(times)


def memory_table(resolution: int, batch: int, steps: int) -> None:
    torch.manual_seed(0)
    model = build_model(Arch("proxyless-mobile", resolution, 10, 3, MOBILE_BLOCKS)).eval()
    net = SparseNet(model, resolution)
    scheme = reference_scheme(net)
    x, y = torch.randn(batch, 3, resolution, resolution), torch.randint(0, 10, (batch,))
    rows = memory_comparison(net, scheme, x, y, lr=0.01, momentum=0.0)
    variants = comparison_variants(scheme, len(net.layers))
    peaks = measure_peak_rss_kb(net, variants, x, y, lr=0.01, momentum=0.0) or {}
    print(f"\nproxyless-mobile {resolution}px, batch {batch}, {len(net.layers)} conv layers; scheme: biases of the "
          f"last {scheme.bias_layers}, weights {list(scheme.weight_ratios)}")
    print(f"{'variant':28} {'predicted kB':>13} {'measured kB':>12} {'peak kB':>8} {'grads@peak':>10} "
          f"{'other@peak':>10} {'peak RSS kB':>12} {'ms/step':>8}")
    times = {}
    for variant in variants:
        row = rows[variant.label]
        times[variant.label] = time_per_step_ms(net, variant, x, y, steps)
        print(f"{variant.label:28} {row['predicted_bytes'] / 1024:13.1f} {row['measured_bytes'] / 1024:12.1f} "
              f"{row['peak_bytes'] / 1024:8.1f} {row['peak_grad_bytes'] / 1024:10.1f} "
              f"{row['peak_other_bytes'] / 1024:10.1f} {peaks.get(variant.label, float('nan')):12.0f} "
              f"{times[variant.label]:8.1f}")

    def ratio(key: str, a: str, b: str) -> str:
        return f"{rows[a][key] / rows[b][key]:.2f}x"

    print("measured = saved for backward + every gradient + optimizer state (the budget's sum); peak = tensor "
          "bytes alive at the worst moment of the step (+ optimizer state)")
    print(f"full/scheme: sum {ratio('measured_bytes', 'full_update', 'scheme')}, peak "
          f"{ratio('peak_bytes', 'full_update', 'scheme')}, peak RSS "
          f"{peaks.get('full_update', 0) / max(peaks.get('scheme', 1), 1):.2f}x (paper: 6.5-8.7x)")
    print(f"reordering alone, full update: sum {ratio('measured_bytes', 'full_update', 'full_update_reordered')}, "
          f"peak {ratio('peak_bytes', 'full_update', 'full_update_reordered')}, peak RSS "
          f"{peaks.get('full_update', 0) / max(peaks.get('full_update_reordered', 1), 1):.2f}x; scheme: sum "
          f"{ratio('measured_bytes', 'scheme_without_reordering', 'scheme')}, peak "
          f"{ratio('peak_bytes', 'scheme_without_reordering', 'scheme')} (paper: 2.7-3.1x)")
    print(f"speed-up per step full/scheme: {times['full_update'] / times['scheme']:.2f}x, full/scheme without "
          f"reordering: {times['full_update'] / times['scheme_without_reordering']:.2f}x (paper: 1.7-1.9x)")

def digits(classes: range) -> tuple[np.ndarray, np.ndarray]:
    raw = load_digits()
    keep = np.isin(raw.target, list(classes))
    return (np.rint(raw.images[keep] * 255 / 16).astype(np.uint8)[..., None],
            (raw.target[keep] - classes.start).astype(np.int64))


def transfer_table(epochs: int, pretrain_epochs: int, budget_kb: float, analysis_steps: int, lr: float) -> None:
    torch.manual_seed(0)
    arch = Arch("tiny", 8, 5, 1, ("mb3_k3", "mb6_k3", "zero", "mb6_k3", "mb3_k3", "mb6_k3", "mb3_k3", "mb6_k3"))
    model = build_model(arch)
    train_standard(model, split_arrays(*digits(range(0, 5)), seed=0), StandardConfig(epochs=pretrain_epochs,
                                                                                       batch_size=32))
    model.eval()
    data = split_arrays(*digits(range(5, 10)), seed=0)
    config = FineTuneConfig(epochs=epochs, batch_size=32, lr=lr)
    base = SparseNet(model, 8)
    # The paper fine-tunes every candidate of the contribution analysis fully; one epoch each by default
    # (a few steps rank candidates by noise: every gain was 0 or one holdout sample at 3 steps).
    steps = analysis_steps or -(-len(data.y_train) // config.batch_size)
    print(f"\ntransfer: tiny 8px pretrained {pretrain_epochs} epochs on digits 0-4 "
          f"fine-tuned {epochs} epochs on digits 5-9, batch 32, SGD lr {lr} (cosine), same for every variant")
    started = time.monotonic()
    scheme, _ = choose_scheme("auto", base, data.x_train, data.y_train, data.x_holdout, data.y_holdout, config,
                              int(budget_kb * 1024), analysis_steps=steps)
    print(f"auto scheme under {budget_kb} kB ({steps} steps a candidate, {time.monotonic() - started:.0f} s of "
          f"analysis + search): biases of the last {scheme.bias_layers}, weights {list(scheme.weight_ratios)}")
    x, y = data.x_train[:32].clone(), data.y_train[:32].clone()
    rows = memory_comparison(base, scheme, x, y, lr=config.lr, momentum=0.0)
    print(f"{'variant':20} {'holdout accuracy':>17} {'measured kB/step':>17} {'peak kB':>8}")
    for label, variant_scheme, plain, memory_label in (("full update", full(len(base.layers)), True, "full_update"),
                                                       ("last layer only", classifier_only(), False,
                                                        "last_layer_only"),
                                                       ("sparse (auto)", scheme, False, "scheme")):
        net = copy.deepcopy(base)
        net.apply_scheme(variant_scheme, plain_autograd=plain)
        fine_tune(net, data.x_train, data.y_train, data.x_holdout, data.y_holdout, config)
        print(f"{label:20} {evaluate(net, data.x_holdout, data.y_holdout):17.3f} "
              f"{rows[memory_label]['measured_bytes'] / 1024:17.1f} {rows[memory_label]['peak_bytes'] / 1024:8.1f}")
    print(f"full/sparse: {rows['full_update']['measured_bytes'] / rows['scheme']['measured_bytes']:.2f}x (sum), "
          f"{rows['full_update']['peak_bytes'] / rows['scheme']['peak_bytes']:.2f}x (peak); holdout: "
          f"{len(data.y_holdout)} images (1 image = {100 / len(data.y_holdout):.2f} points)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--budget-kb", type=float, default=400.0)
    parser.add_argument("--analysis-steps", type=int, default=0, help="steps of each candidate's fine-tune in the "
                        "contribution analysis; 0: one epoch")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate of every variant (the reference's "
                        "scripts: 0.1, sgd_nomom, for full and sparse update alike)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared machine: one thread, figures side by side in one run
    memory_table(args.resolution, args.batch, args.steps)
    transfer_table(args.epochs, args.pretrain_epochs, args.budget_kb, args.analysis_steps, args.lr)


if __name__ == "__main__":
    main()
