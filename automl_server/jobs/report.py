"""Stage "report": one JSON document with what a team needs to decide and
deploy: accuracy, measured and predicted latency, size and cost, the
architecture and the downloads. Also served at GET /api/v1/jobs/<id>/report."""
from __future__ import annotations

import json
from typing import Any

from celery import shared_task

from automl_server.jobs.context import StageContext
from automl_server.jobs.search_signal import search_signal
from automl_server.jobs.search_stage import chosen as chosen_stage

REPORT_FORMAT = 1


def stage_seconds(ctx: StageContext) -> dict[str, float]:
    """Wall time per stage from the timeline (first start to the next stage's start)."""
    from sqlalchemy import select

    from automl_server.db.models import JobEvent, utcnow

    with ctx.db.session() as session:
        rows = session.execute(select(JobEvent.stage, JobEvent.created_at).where(
            JobEvent.job_id == ctx.job_id, JobEvent.kind == "state", JobEvent.message.like("stage % started"))
            .order_by(JobEvent.id)).all()
    starts: dict[str, Any] = {}
    for stage, at in rows:
        if stage is not None:  # a stage's "started" event always names it
            starts.setdefault(stage, at)
    ordered = list(starts.items())
    seconds = {}
    for i, (stage, at) in enumerate(ordered):
        end = ordered[i + 1][1] if i + 1 < len(ordered) else utcnow()
        seconds[stage] = round((end - at).total_seconds(), 3)
    return seconds


def _fit_summary(fit: dict[str, Any] | None) -> dict[str, Any] | None:
    if not fit or "tries" not in fit:
        return None
    return {"kept_try": fit["try"], "measured_ms": fit["measured_ms"], "estimated_ms": fit.get("estimated_ms"),
            "device_ratio": fit.get("device_ratio"), "inside_window": fit["inside_window"],
            "window_ms": fit["window_ms"], "ended": fit.get("ended"),
            "tries": [{k: t.get(k) for k in ("try", "predicted_ms", "measured_ms")} for t in fit["tries"]]}


def build_report(ctx: StageContext) -> dict[str, Any]:
    import torch

    r = ctx.results
    chosen = chosen_stage(r)
    verify, export, train, profile = r["verify"], r["export"], r["train"], r["profile"]
    seconds = stage_seconds(ctx)
    compute_s = sum(seconds.get(s, 0.0) for s in ("validate", "search", "tune", "train", "export", "baselines"))
    device_s = (float(profile.get("device_seconds", 0.0)) + float((r.get("fit") or {}).get("device_seconds", 0.0))
                + float(verify.get("device_seconds", 0.0)) + float((r.get("baselines") or {}).get("device_seconds", 0.0)))
    gpu = torch.cuda.is_available()
    report = {
        "format": REPORT_FORMAT,
        "job_id": ctx.job_id,
        "dataset": ctx.params["dataset"], "device": ctx.params["device"], "runtime": ctx.params["runtime"],
        "space": ctx.params["space"], "pipeline": ctx.params["pipeline"], "strategy": ctx.params.get("strategy"),
        "latency_target_ms": float(ctx.params["latency_target_ms"]),
        "accuracy": {"test": train["test_accuracy"], "holdout": train["holdout_accuracy"],
                     "test_samples": train["test_samples"], "trained_on": train.get("trained_on", "train"),
                     "train_samples": train.get("train_samples")},
        "latency": {"predicted_ms": verify["predicted_ms"], "measured_ms": verify["measured_ms"],
                    "measured_over_predicted": verify["ratio"], "within_10pct": verify["within_10pct"],
                    "meets_target": verify["meets_target"], "achievable_ms": profile["achievable_ms"],
                    "measured_file": verify.get("measured_file"),
                    # measured_ms is at the target's pace (latency_db.pace), as the prediction is;
                    # this is what the clock said during the measurement.
                    "raw_measured_ms": verify.get("raw_measured_ms", verify["measured_ms"]),
                    # Each timing of the file (settings.network_timings); measured_ms is their median.
                    "timings_ms": verify.get("timings_ms"),
                    "calibrated": profile.get("calibration") is not None,
                    "calibration_rel_rmse": (profile.get("calibration") or {}).get("rel_rmse"),
                    # The predictor's error on networks left out of its fit, the interval it puts
                    # around this prediction, and the margin the job kept under the target.
                    "predictor_error": profile.get("predictor_error"),
                    "predicted_interval_ms": _interval(verify["predicted_ms"], profile.get("predictor_error")),
                    "target_margin": profile.get("target_margin"),
                    "measurement_reliable": verify.get("reliable"),
                    "measurement_unreliable_reason": verify.get("unreliable_reason"),
                    # Every network tried (a retry when one measured over the target, jobs/promise.py).
                    "tries": [{k: t[k] for k in ("try", "predicted_ms", "measured_ms", "meets_target")}
                              for t in verify.get("tries", [])]},
        # The networks the fit stage measured untrained before training (jobs/fit.py); None when it did not run.
        "fit": _fit_summary(r.get("fit")),
        # Whether the delivered network's measured latency met the target; false says the miss plainly.
        "target_met": bool(verify.get("target_met", verify["meets_target"])),
        "target_missed": verify.get("missed"),
        "model": {"parameters": export["parameters"], "macs": export["macs"], "onnx_bytes": export["model_bytes"],
                  "tflite_bytes": export.get("tflite", {}).get("size_bytes"), "input": export["input"],
                  "onnx_batch": export["onnx"].get("batch", 1)},
        # The class names in the order of the model's outputs, and how to prepare an image for it.
        "labels": export.get("labels"),
        "preprocessing": export.get("preprocessing"),
        "cost": {"device_hours": round(device_s / 3600, 6),
                 "cpu_hours": round(0.0 if gpu else compute_s / 3600, 6),
                 "gpu_hours": round(compute_s / 3600 if gpu else 0.0, 6),
                 "stage_seconds": seconds},
        "arch": chosen["arch"],
        # How much the supernet had learned when it chose (jobs/search_signal.py).
        "search_signal": search_signal(r),
        "tuning": ({k: r["tune"].get(k) for k in ("study_name", "trial_number", "trial_params", "used_trial",
                                                   "trials")} if "tune" in r and "study_name" in r["tune"] else None),
        # The pipeline's own figures (rounds and bytes, workers' traffic, scheme and memory) and the
        # deployment schedule (IOS) when those stages ran.
        "training": {"pipeline": train.get("pipeline", ctx.params["pipeline"]), "settings": train.get("settings"),
                     "epochs": train.get("epochs"),
                     "figures": train.get(str(train.get("pipeline", ctx.params["pipeline"])))},
        "schedule": r.get("schedule"),
        # The searched network against random search and a uniform network (baselines stage, when it ran).
        "baselines": r.get("baselines"),
        # What an observer of the job's traffic could rebuild, per defense (audit stage, when it ran).
        "privacy": r.get("audit"),
        "downloads": {kind: f"/api/v1/jobs/{ctx.job_id}/artifacts/{kind}"
                      for kind in ("onnx", "tflite", "arch", "weights", "schedule", "privacy_grid") if kind in _artifact_kinds(ctx)}
                     | {"report": f"/api/v1/jobs/{ctx.job_id}/report",
                        # One zip with what an app needs (api/jobs.py: download_bundle).
                        "bundle": f"/api/v1/jobs/{ctx.job_id}/artifacts/bundle"},
    }
    if (report["search_signal"] or {}).get("weak"):
        ctx.event("warning", report["search_signal"]["note"], search_signal=report["search_signal"])
    path = ctx.job_dir() / "report.json"
    path.write_text(json.dumps(report, indent=2))
    ctx.store_artifact("report", path)
    if ctx.params.get("comparison_id"):
        report["cross_measurements"] = measure_on_other_targets(ctx, chosen["arch"])
    return report


def _interval(predicted_ms: float, error: dict[str, Any] | None) -> list[float] | None:
    """[low, high] around a prediction: -+ the predictor's held-out 95th-percentile error."""
    if not error or not isinstance(error.get("p95_rel_error"), (int, float)):
        return None
    p95 = float(error["p95_rel_error"])
    return [round(predicted_ms * (1 - p95), 6), round(predicted_ms * (1 + p95), 6)]


def measure_on_other_targets(ctx: StageContext, arch: dict[str, Any]) -> list[str]:
    """A comparison's job sends its network to every other device of the
    comparison; the measurements land in the latency database (whole networks)
    where the comparison's matrix reads them."""
    from automl_server.db.models import Comparison
    from automl_server.profiling import ProfilingError, measure_network_signature, network_method, resolve_target
    from search_spaces import Arch

    with ctx.db.session() as session:
        comparison = session.get(Comparison, ctx.params["comparison_id"])
        targets = list(comparison.targets) if comparison else []
    sent = []
    for t in targets:
        if (t["device"], t["runtime"]) == (ctx.params["device"], ctx.params["runtime"]):
            continue
        try:
            target = resolve_target(ctx.db, t["device"], t["runtime"])
        except ProfilingError as exc:
            ctx.event("log", f"cannot measure on {t['device']}: {exc}")
            continue
        row, column = f"{ctx.params['device']}:{ctx.params['runtime']}", f"{t['device']}:{t['runtime']}"
        measure_network_signature(ctx.celery, target, Arch.from_dict(arch), network_method(ctx.settings)).apply_async(
            link=ctx.celery.signature(RECORD_COMPARISON_CELL, args=[ctx.params["comparison_id"], f"{row}|{column}"],
                                      queue="default"))
        sent.append(column)
    return sent


RECORD_COMPARISON_CELL = "automl.record_comparison_cell"


@shared_task(name=RECORD_COMPARISON_CELL, bind=True, acks_late=True)
def record_comparison_cell(self: Any, payload: dict[str, Any], comparison_id: str, cell: str) -> None:
    """One cell of a comparison's matrix: a network measured on another device."""
    from automl_server.settings import settings_of
    from automl_server.db.engine import get_database
    from automl_server.db.models import Comparison

    from automl_server.profiling import paced_measurement

    db = get_database(settings_of(self.app).resolved_database_url)
    # At the measuring target's pace, as that target's own job reports its latency.
    value: Any = paced_measurement(db, payload)["measured_ms"] if "error" not in payload else {"error": payload["error"]}
    with db.session() as session:
        comparison = session.get(Comparison, comparison_id, with_for_update=True)
        if comparison is not None:  # a new dict: SQLAlchemy does not track in-place JSON mutation
            comparison.cells = {**comparison.cells, cell: value}


def _artifact_kinds(ctx: StageContext) -> set[str]:
    from sqlalchemy import select

    from automl_server.db.models import Artifact

    with ctx.db.session() as session:
        return set(session.scalars(select(Artifact.kind).where(Artifact.job_id == ctx.job_id)))
