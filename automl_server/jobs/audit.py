"""Stage "audit": what an observer of the job's traffic could rebuild of its
training data (engine/privacy), and what each defense would cost.

Runs after ``train`` for jobs whose ``params.privacy_audit`` says so (by
default the fedgkt and delayed-sgd pipelines). It reads the trained weights
from the job's ``model.pt`` and attacks copies: the trained network, and the
files the export stage reads, are never changed. Bounded: the audit's own
``minutes`` and, when the job has a budget of minutes, the train stage's
share of it; cancel is noticed between attack iterations.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from pydantic import ValidationError

from automl_server.engine.privacy.audit import AuditImages
from automl_server.engine.privacy.grid import save_grid
from automl_server.engine.privacy.runs import TrainingData, audit_features, audit_gradients
from automl_server.engine.privacy.settings import audit_settings
from automl_server.jobs.context import StageContext, StageFailed
from automl_server.jobs.spec import MINUTE_SHARES, JobSpec
from automl_server.jobs.train import fit_split
from search_spaces import Arch, build_model

GRID_FILE = "privacy-grid.png"
# The label smoothing of the pipelines without a setting for it (standard, fedgkt's CE).
DEFAULT_LABEL_SMOOTHING = 0.1


def audit_privacy(ctx: StageContext) -> dict[str, Any]:
    try:
        settings = audit_settings(ctx.params)
    except ValidationError as exc:
        raise StageFailed(f"params.privacy_audit: {exc.errors()[0]['msg']}") from None
    spec = JobSpec.from_params(ctx.params)
    pipeline = str(ctx.params["pipeline"])
    weights = ctx.job_dir() / "model.pt"
    if not weights.exists():
        raise StageFailed("no trained model to audit; the train stage must run first")
    saved = torch.load(weights, weights_only=False)
    arch = Arch.from_dict(saved["arch"])
    model = build_model(arch)
    model.load_state_dict(saved["state_dict"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        initial = build_model(arch)  # the job's starting weights (train.py seeds them the same way)

    data, arrays = fit_split(ctx, spec)
    if len(data.y_holdout):
        x_eval, y_eval = data.x_holdout, data.y_holdout
    else:
        x_eval = data.normalise(arrays["x"][arrays["test_idx"]])
        y_eval = torch.from_numpy(arrays["y"][arrays["test_idx"]].astype("int64"))
    images = AuditImages(data.x_train, data.y_train, tuple(data.mean), tuple(data.std), data.num_classes)
    training = TrainingData(data.x_train, data.y_train, x_eval, y_eval)

    limit_s = settings.minutes * 60
    if spec.budget.minutes is not None:
        limit_s = min(limit_s, spec.budget.minutes * 60 * MINUTE_SHARES["train"])
    ends = time.monotonic() + limit_s

    def should_stop() -> bool:
        ctx.check_cancelled()  # raises JobCancelled once the user cancelled
        return time.monotonic() > ends

    def progress(fraction: float, message: str) -> None:
        ctx.progress(fraction, message)

    ctx.progress(0.0, f"auditing what the {pipeline} pipeline shares ({settings.samples} images, "
                 f"{settings.iterations} L-BFGS iterations per attack)")
    started = time.monotonic()
    threads = torch.get_num_threads()
    # The attacks are long chains of small steps on one image or one batch: more threads only
    # oversubscribe the worker's cores (the job's other stages keep their setting).
    torch.set_num_threads(1)
    try:
        section, rows = _attack(ctx, settings, spec, pipeline, arch, model, initial, images, training,
                                should_stop, progress)
    finally:
        torch.set_num_threads(threads)
    section.update({"pipeline": pipeline, "settings": settings.model_dump(mode="json"),
                    "seconds": round(time.monotonic() - started, 3), "weights": "trained"})
    if rows and rows[0].originals:
        grid = save_grid(rows, ctx.job_dir() / GRID_FILE, columns=settings.samples)
        ctx.store_artifact("privacy_grid", grid)
        section["grid"] = f"/api/v1/jobs/{ctx.job_id}/artifacts/privacy_grid"
        section["grid_rows"] = ["originals"] + [r.name for r in rows if r.rebuilds]
    first = section["rows"][0]
    ctx.event("metric", f"privacy audit: {first['name']}: PSNR {first['psnr_db']} dB, SSIM {first['ssim']}",
              psnr_db=first["psnr_db"], ssim=first["ssim"], labels_recovered=first["labels_recovered"])
    if section["not_run"]:
        ctx.event("log", f"privacy audit stopped at its time limit; not run: {', '.join(section['not_run'])}")
    return section


def _attack(ctx: StageContext, settings: Any, spec: JobSpec, pipeline: str, arch: Arch, model: torch.nn.Module,
            initial: torch.nn.Module, images: AuditImages, training: TrainingData, should_stop: Any,
            progress: Any) -> tuple[dict[str, Any], list[Any]]:
    """The attacks on what this pipeline shares: FedGKT's H, or a worker's gradient."""
    if pipeline == "fedgkt":
        from automl_server.engine.train.fedgkt.models import default_cut, split_edge_model

        cut = (ctx.results.get("train", {}).get("fedgkt") or {}).get("cut", default_cut(arch.layout()))
        edge = split_edge_model(model, arch, int(cut))
        section, rows = audit_features(edge.extractor, edge.client_classifier, images, training, settings,
                                       should_stop=should_stop, progress=progress)
        section["cut"] = int(cut)
        return section, rows
    batch_size, density, smoothing = _gradient_traffic(ctx, spec, pipeline)
    section, rows = audit_gradients(model, initial, images, training, settings, batch_size=batch_size,
                                    density=density, label_smoothing=smoothing, should_stop=should_stop,
                                    progress=progress)
    if pipeline != "delayed-sgd":
        section["note"] = (f"the {pipeline} pipeline sends no gradient over a network; the audit shows what "
                           "a worker's gradient of the same training would leak")
    return section, rows


def _gradient_traffic(ctx: StageContext, spec: JobSpec, pipeline: str) -> tuple[int, float | None, float]:
    """(per-worker batch size, DGC density or None, label smoothing) of what a worker sends."""
    if pipeline == "delayed-sgd":
        from automl_server.engine.train.distributed.settings import DelayedSGDSettings

        dts = DelayedSGDSettings.model_validate(ctx.params.get("distributed") or {})
        return dts.batch_size or spec.batch_size, dts.compression, dts.label_smoothing
    return spec.batch_size, None, DEFAULT_LABEL_SMOOTHING
