"""The audit of one trained network: attack what its pipeline shares, under
the job's own settings and under each defense, and score every rebuild.

Two kinds of traffic:

- gradients (``delayed-sgd``): a worker's gradient at its per-worker batch
  size, in train mode, after the job's DGC compression (the "job" row), plus a
  single image's undefended gradient (the worst case) and each defense;
- features (``fedgkt``): the H a client sends per image, inverted through the
  extractor (see inversion.py); its labels travel in the clear.

Deviations, stated: the job's row attacks one step's gradient at the trained
weights, before any residual or momentum is mixed in (DGC's first
synchronisation, the worst case for the worker); the workers' random
translation is not applied. Every function here works on copies: the trained
network is never changed.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from automl_server.engine.privacy.defenses import Defense
from automl_server.engine.privacy.dlg import Rebuild, dlg_attack
from automl_server.engine.privacy.gradients import last_linear_weight_index, shared_gradient
from automl_server.engine.privacy.idlg import idlg_label, idlg_label_set
from automl_server.engine.privacy.inversion import invert_features
from automl_server.engine.privacy.metrics import match_rebuilds, psnr, ssim, to_pixels
from automl_server.engine.privacy.settings import PrivacyAuditSettings

# A rebuild counts as recognisable at PSNR >= 15 dB (RMS pixel error <= 0.18 of the
# range). Our choice: the DLG paper judges by eye; on 8x8 and 28x28 digits rebuilds
# under ~12 dB are noise and those above ~18 dB show the digit.
RECOGNISABLE_PSNR_DB = 15.0


@dataclass
class AuditImages:
    """The images attacked (normalised model inputs) and how to show them as pixels."""

    x: torch.Tensor
    y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int


@dataclass
class Row:
    """One attacked setting: per-image scores and the rebuilt pixels (for the grid)."""

    name: str
    kind: str
    value: float | None
    images: list[dict[str, Any]] = field(default_factory=list)
    originals: list[np.ndarray] = field(default_factory=list)
    rebuilds: list[np.ndarray] = field(default_factory=list)
    accuracy: float | None = None
    accuracy_cost: float | None = None
    note: str | None = None
    complete: bool = True

    def summary(self) -> dict[str, Any]:
        psnrs = [i["psnr"] for i in self.images]
        finite = [p for p in psnrs if math.isfinite(p)]
        labels = [i["label_recovered"] for i in self.images if i["label_recovered"] is not None]
        return {"name": self.name, "kind": self.kind, "value": self.value, "images": len(self.images),
                "psnr_db": _mean([min(p, 100.0) for p in psnrs]),
                "psnr_db_best": max(finite) if finite else (100.0 if psnrs else None),
                "ssim": _mean([i["ssim"] for i in self.images]),
                "recognisable": (sum(p >= RECOGNISABLE_PSNR_DB for p in psnrs) / len(psnrs)) if psnrs else None,
                "labels_recovered": (sum(labels) / len(labels)) if labels else None,
                "accuracy": self.accuracy, "accuracy_cost": self.accuracy_cost, "note": self.note,
                "complete": self.complete, "per_image": self.images}


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def score(row: Row, images: AuditImages, idx: torch.Tensor, rebuild: Rebuild,
          label_guess: list[int | None]) -> None:
    """Pair the rebuilt batch with its originals and add each image's PSNR, SSIM and label."""
    originals = to_pixels(images.x[idx], images.mean, images.std)
    rebuilt = to_pixels(rebuild.x, images.mean, images.std)
    order = match_rebuilds(originals, rebuilt)
    for position, original in enumerate(originals):
        mine = rebuilt[order[position]]
        truth = int(images.y[idx[position]])
        guess = label_guess[position] if position < len(label_guess) else None
        row.images.append({"index": int(idx[position]), "psnr": round(psnr(original, mine), 3),
                           "ssim": round(ssim(original, mine), 4), "label": truth, "label_rebuilt": guess,
                           "label_recovered": None if guess is None else guess == truth,
                           "objective": rebuild.trace.losses[-1] if rebuild.trace.losses else None})
        row.originals.append(original)
        row.rebuilds.append(mine)
    row.complete = row.complete and not rebuild.trace.stopped_early


def attack_gradients(model: nn.Module, images: AuditImages, idx: torch.Tensor, defense: Defense | None, *,
                     settings: PrivacyAuditSettings, label_smoothing: float, train_mode: bool, row: Row,
                     should_stop: Callable[[], bool]) -> None:
    """Attack the gradient of the images ``idx`` (one batch), after ``defense``."""
    x, y = images.x[idx], images.y[idx]
    net = copy.deepcopy(model)
    shared = shared_gradient(net, x, y, images.num_classes, label_smoothing, train_mode=train_mode)
    generator = torch.Generator().manual_seed(settings.seed + 17)
    if defense is not None:
        shared = defense.apply(shared, generator)
    last = shared[last_linear_weight_index(net)]
    if len(idx) == 1:
        # iDLG's fast path: the label from the sign of the last layer, then only x is optimised.
        label = idlg_label(last)
        rebuild = dlg_attack(net, shared, tuple(x.shape), images.num_classes, iterations=settings.iterations,
                             known_labels=torch.tensor([label]), label_smoothing=label_smoothing,
                             seed=settings.seed, train_mode=train_mode, should_stop=should_stop)
        score(row, images, idx, rebuild, [label])
        return
    rebuild = dlg_attack(net, shared, tuple(x.shape), images.num_classes, iterations=settings.iterations,
                         seed=settings.seed, train_mode=train_mode, should_stop=should_stop)
    # Per image, DLG's own label (the argmax of its soft label); iDLG's set of classes is reported beside it.
    order_labels = [int(v) for v in rebuild.labels]
    originals = to_pixels(x, images.mean, images.std)
    order = match_rebuilds(originals, to_pixels(rebuild.x, images.mean, images.std))
    score(row, images, idx, rebuild, [order_labels[order[i]] for i in range(len(idx))])
    present = {int(v) for v in y}
    row.note = (f"iDLG's label set {sorted(idlg_label_set(last))} vs the batch's {sorted(present)}")


def invert(extractor: nn.Module, images: AuditImages, idx: torch.Tensor, defense: Defense | None, *,
           settings: PrivacyAuditSettings, row: Row, should_stop: Callable[[], bool]) -> None:
    """Invert the features H of each image ``idx`` (as sent, then after ``defense``)."""
    for i in idx:
        one = i.view(1)
        x = images.x[one]
        with torch.no_grad():
            extractor.eval()
            features = extractor(x)
        if defense is not None:
            features = defense.apply([features], torch.Generator().manual_seed(settings.seed + 17))[0]
        rebuild = invert_features(extractor, features, tuple(x.shape), iterations=settings.iterations,
                                  seed=settings.seed, should_stop=should_stop)
        # FedGKT's upload carries each image's label (fedgkt/payload.py): recovered by reading it.
        score(row, images, one, rebuild, [int(images.y[one][0])])
        if should_stop():
            row.complete = False
            return


def short_training_accuracy(initial: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                            x_eval: torch.Tensor, y_eval: torch.Tensor, defense: Defense | None, *, steps: int,
                            batch_size: int, label_smoothing: float, seed: int) -> float:
    """Accuracy on the eval split after ``steps`` of SGD (momentum 0.9, lr 0.05, as the job's
    pipelines) from the job's initial weights, every gradient passed through ``defense``.

    DGC top-k keeps its residual (what is not sent is added to the next gradient),
    as DGC does; pruning and noise have none, as the DLG paper applies them. A
    batch defense trains on batches of ``defense.value`` images."""
    net = copy.deepcopy(initial)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    noise_generator = torch.Generator().manual_seed(seed + 1)
    per_batch = int(defense.value) if defense is not None and defense.kind == "batch" else batch_size
    residual = [torch.zeros_like(p) for p in params] if defense is not None and defense.kind == "top_k" else None
    net.train()
    for _ in range(steps):
        rows = torch.randint(0, len(y_train), (min(per_batch, len(y_train)),), generator=generator)
        loss = F.cross_entropy(net(x_train[rows]), y_train[rows], label_smoothing=label_smoothing)
        gradients = list(torch.autograd.grad(loss, params))
        if residual is not None:
            gradients = [g + r for g, r in zip(gradients, residual)]
        if defense is not None:
            sent = defense.apply(gradients, noise_generator)
            if residual is not None:
                residual = [g - s for g, s in zip(gradients, sent)]
            gradients = sent
        optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, gradients):
            p.grad = g
        optimizer.step()
    net.eval()
    with torch.no_grad():
        correct = sum(int((net(x_eval[i:i + 256]).argmax(1) == y_eval[i:i + 256]).sum())
                      for i in range(0, len(y_eval), 256))
    return correct / max(len(y_eval), 1)


def features_accuracy(edge_extractor: nn.Module, classifier: nn.Module, x_eval: torch.Tensor, y_eval: torch.Tensor,
                      defense: Defense | None, seed: int) -> float:
    """The edge model's accuracy when its H passes through ``defense`` (what the server would learn from)."""
    generator = torch.Generator().manual_seed(seed)
    edge_extractor.eval()
    classifier.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y_eval), 256):
            features = edge_extractor(x_eval[i:i + 256])
            if defense is not None:
                features = defense.apply([features], generator)[0]
            correct += int((classifier(features).argmax(1) == y_eval[i:i + 256]).sum())
    return correct / max(len(y_eval), 1)
