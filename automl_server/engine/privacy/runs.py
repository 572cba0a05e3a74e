"""The audit of a job's traffic, row by row, within a time limit.

``audit_gradients`` (delayed-sgd) and ``audit_features`` (fedgkt) return the
privacy section of the report: one row for the job's own settings, one for
the undefended worst case, then one per defense setting, each with its
accuracy cost. A row not reached before ``should_stop`` is listed as not run;
the report never pretends to more than was attacked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from automl_server.engine.privacy.audit import (
    RECOGNISABLE_PSNR_DB,
    AuditImages,
    Row,
    attack_gradients,
    features_accuracy,
    invert,
    short_training_accuracy,
)
from automl_server.engine.privacy.defenses import Defense
from automl_server.engine.privacy.settings import PrivacyAuditSettings

Progress = Callable[[float, str], None]


@dataclass
class TrainingData:
    """What the accuracy costs are measured on: the job's training split and an eval split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_eval: torch.Tensor
    y_eval: torch.Tensor


def gradient_defenses(settings: PrivacyAuditSettings, job_density: float | None) -> list[Defense]:
    defenses = [Defense("prune", s) for s in settings.prune_sparsities]
    defenses.append(Defense("top_k", job_density if job_density is not None else 0.01))
    defenses += [Defense("gaussian", v) for v in settings.noise_variances]
    defenses.append(Defense("batch", settings.larger_batch))
    return defenses


def pick(images: AuditImages, count: int, seed: int) -> torch.Tensor:
    """``count`` image positions chosen by the seed (the same ones on a rerun)."""
    order = torch.randperm(len(images.y), generator=torch.Generator().manual_seed(seed))
    return order[:min(count, len(images.y))]


def _finish(rows: list[Row], pending: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    return {**extra, "recognisable_psnr_db": RECOGNISABLE_PSNR_DB, "rows": [r.summary() for r in rows],
            "not_run": pending, "complete": not pending and all(r.complete for r in rows)}


def audit_gradients(model: nn.Module, initial: nn.Module, images: AuditImages, data: TrainingData,
                    settings: PrivacyAuditSettings, *, batch_size: int, density: float | None,
                    label_smoothing: float, should_stop: Callable[[], bool],
                    progress: Progress) -> tuple[dict[str, Any], list[Row]]:
    """A delayed-sgd worker's gradient attacked (DLG, iDLG labels) as sent and under each defense."""
    chosen = pick(images, max(settings.samples, batch_size), settings.seed)
    job_row = Row(f"as the job sends it: batch of {batch_size}"
                  + (f", DGC top {density:.2%}" if density is not None else ", dense"), "job", None)
    single = Row("one image, undefended", "none", None)
    defenses = gradient_defenses(settings, density) if settings.defenses else []
    rows: list[Row] = []
    pending = [job_row.name, single.name] + [d.name for d in defenses]
    steps_total = 2 + len(defenses)

    def done(message: str) -> None:
        pending.pop(0)
        progress((steps_total - len(pending)) / steps_total, message)

    # The job's own traffic: whole per-worker batches, train mode, after its compression.
    job_defense = Defense("top_k", density) if density is not None else None
    for start in range(0, max(settings.samples, 1), batch_size):
        batch = chosen[start:start + batch_size]
        attack_gradients(model, images, batch, job_defense, settings=settings, label_smoothing=label_smoothing,
                         train_mode=True, row=job_row, should_stop=should_stop)
        if should_stop():
            break
    rows.append(job_row)
    done(f"attacked the job's traffic: {job_row.summary()['psnr_db']} dB")
    if should_stop():
        return _finish(rows, pending, {"traffic": "gradients"}), rows
    # The worst case: one image's gradient, nothing done to it (eval-mode BatchNorm, see dlg.py).
    for i in chosen[:settings.samples]:
        attack_gradients(model, images, i.view(1), None, settings=settings, label_smoothing=label_smoothing,
                         train_mode=False, row=single, should_stop=should_stop)
        if should_stop():
            break
    rows.append(single)
    done(f"attacked single images: {single.summary()['psnr_db']} dB")
    base_accuracy = None
    if settings.cost_steps and defenses:
        base_accuracy = short_training_accuracy(initial, data.x_train, data.y_train, data.x_eval, data.y_eval, None,
                                                steps=settings.cost_steps, batch_size=batch_size,
                                                label_smoothing=label_smoothing, seed=settings.seed)
    for defense in defenses:
        if should_stop():
            break
        row = Row(defense.name, defense.kind, defense.value)
        if defense.kind == "batch":
            attack_gradients(model, images, pick(images, int(defense.value), settings.seed + 1), None,
                             settings=settings, label_smoothing=label_smoothing, train_mode=False, row=row,
                             should_stop=should_stop)
        else:
            for i in chosen[:settings.defense_samples]:
                attack_gradients(model, images, i.view(1), defense, settings=settings,
                                 label_smoothing=label_smoothing, train_mode=False, row=row, should_stop=should_stop)
                if should_stop():
                    break
        if base_accuracy is not None and not should_stop():
            row.accuracy = short_training_accuracy(initial, data.x_train, data.y_train, data.x_eval, data.y_eval,
                                                   defense, steps=settings.cost_steps, batch_size=batch_size,
                                                   label_smoothing=label_smoothing, seed=settings.seed)
            row.accuracy_cost = round(base_accuracy - row.accuracy, 4)
        rows.append(row)
        done(f"{defense.name}: {row.summary()['psnr_db']} dB")
    extra = {"traffic": "gradients", "batch_size": batch_size, "density": density,
             "label_smoothing": label_smoothing, "cost_baseline_accuracy": base_accuracy,
             "cost_steps": settings.cost_steps if base_accuracy is not None else 0}
    return _finish(rows, pending, extra), rows


def audit_features(extractor: nn.Module, classifier: nn.Module, images: AuditImages, data: TrainingData,
                   settings: PrivacyAuditSettings, *, should_stop: Callable[[], bool],
                   progress: Progress) -> tuple[dict[str, Any], list[Row]]:
    """FedGKT's uploaded H inverted through the extractor, as sent and under each defense on H."""
    chosen = pick(images, settings.samples, settings.seed)
    job_row = Row("as the job sends it: H per image", "job", None)
    defenses = ([Defense("prune", s) for s in settings.prune_sparsities]
                + [Defense("gaussian", v) for v in settings.noise_variances]) if settings.defenses else []
    pending = [job_row.name] + [d.name for d in defenses]
    steps_total = len(pending)
    rows: list[Row] = []
    invert(extractor, images, chosen, None, settings=settings, row=job_row, should_stop=should_stop)
    base_accuracy = features_accuracy(extractor, classifier, data.x_eval, data.y_eval, None, settings.seed)
    job_row.accuracy = base_accuracy
    rows.append(job_row)
    pending.pop(0)
    progress(1 / steps_total, f"inverted the job's features: {job_row.summary()['psnr_db']} dB")
    for defense in defenses:
        if should_stop():
            break
        row = Row(defense.name, defense.kind, defense.value)
        invert(extractor, images, chosen[:settings.defense_samples], defense, settings=settings, row=row,
               should_stop=should_stop)
        row.accuracy = features_accuracy(extractor, classifier, data.x_eval, data.y_eval, defense, settings.seed)
        row.accuracy_cost = round(base_accuracy - row.accuracy, 4)
        rows.append(row)
        pending.pop(0)
        progress((steps_total - len(pending)) / steps_total, f"{defense.name}: {row.summary()['psnr_db']} dB")
    extra = {"traffic": "features", "labels_sent_in_clear": True,
             "cost_measured_as": "the trained edge model's accuracy with the defense applied to its H"}
    return _finish(rows, pending, extra), rows
