"""/api/v1/comparisons: one dataset searched for several devices, each found
network measured on every device: the specialisation matrix of the
ProxylessNAS paper (rows: specialised for X; columns: latency on Y)."""
from __future__ import annotations

import csv
import io
from typing import Any

from flask import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from automl_server.api.blueprint import api_blueprint, registry
from automl_server.api.jobs import invalid, queue_job, submit
from automl_server.api.problems import not_found
from automl_server.api.schemas import ComparisonCreate, ComparisonOut, JobCreate
from automl_server.db.models import Comparison, Job, JobState
from automl_server.jobs.submit import InvalidRequest, UnknownReference
from automl_server.service_state import state


def _targets(session: Session, devices: list[str]) -> list[dict[str, str]]:
    from sqlalchemy.orm import selectinload

    from automl_server.db.models import Device

    targets = []
    for index, entry in enumerate(devices):
        name, _, runtime = entry.partition(":")
        device = session.scalar(select(Device).where(Device.name == name).options(selectinload(Device.runtimes)))
        if device is None:
            raise invalid(UnknownReference(f"devices.{index}", f"no device {name!r}; give names from GET /api/v1/devices"))
        runtimes = [r.name for r in device.runtimes]
        runtime = runtime or (runtimes[0] if runtimes else "")
        if runtime not in runtimes:
            raise invalid(UnknownReference(f"devices.{index}", f"device {name!r} has no runtime {runtime!r}; "
                           f"accepted: {', '.join(runtimes) or 'none'}"))
        targets.append({"device": name, "runtime": runtime})
    if len({(t["device"], t["runtime"]) for t in targets}) != len(targets):
        raise invalid(InvalidRequest("devices", "each device (and runtime) may appear once"))
    return targets


@registry.operation(
    api_blueprint, "/comparisons", "POST", scope="submit", summary="Search one dataset for several devices", tag="comparisons",
    body=ComparisonCreate, responses={202: ComparisonOut}, errors=(503,),
)
def create_comparison(body: ComparisonCreate) -> tuple[ComparisonOut, int, dict[str, str]]:
    """Starts one job per device; each job's network is then measured on every
    other device. Poll the comparison until ``done``."""
    s = state()
    with s.db.session() as session:
        targets = _targets(session, body.devices)
        comparison = Comparison(dataset_name=body.dataset, targets=targets, request=body.model_dump(mode="json"))
        session.add(comparison)
        session.flush()
        jobs = []
        for t in targets:
            job_body = JobCreate(dataset=body.dataset, device=t["device"], runtime=t["runtime"],
                                 latency_target_ms=body.latency_target_ms, space=body.space, strategy=body.strategy,
                                 budget=body.budget, tune=body.tune, params=body.params)
            jobs.append(submit(session, job_body, comparison_id=comparison.id))
        comparison.dataset_name = jobs[0].dataset_name
        queued = [(job.id, job.device_name) for job in jobs]
        comparison_id = comparison.id
    for job_id, device_name in queued:
        queue_job(job_id, device_name)
    with s.db.session() as session:
        out = to_out(session, session.get_one(Comparison, comparison_id))
    return out, 202, {"Location": f"/api/v1/comparisons/{comparison_id}"}


def _name(target: dict[str, str]) -> str:
    return f"{target['device']}:{target['runtime']}"


def to_out(session: Session, comparison: Comparison) -> ComparisonOut:
    jobs = list(session.scalars(select(Job).where(Job.comparison_id == comparison.id)))
    by_target = {(j.device_name, j.runtime): j for j in jobs}
    matrix: list[list[float | None]] = []
    accuracy: list[float | None] = []
    for row_target in comparison.targets:
        job = by_target.get((row_target["device"], row_target["runtime"]))
        report = job.result.get("report") if job else None
        accuracy.append(report["accuracy"]["test"] if report else None)
        row: list[float | None] = []
        for col_target in comparison.targets:
            if report is None:
                row.append(None)
            elif col_target == row_target:
                row.append(report["latency"]["measured_ms"])
            else:
                cell = comparison.cells.get(f"{_name(row_target)}|{_name(col_target)}")
                row.append(float(cell) if isinstance(cell, (int, float)) else None)
        matrix.append(row)
    finished = all(JobState(j.state).is_terminal for j in jobs)
    # Done when every job ended and every cell that can come has come (a failed
    # measurement is recorded with its error, and then stays empty).
    expected = {f"{_name(r)}|{_name(c)}" for r, a in zip(comparison.targets, accuracy) if a is not None
                for c in comparison.targets if c != r}
    filled = expected <= set(comparison.cells)
    return ComparisonOut(
        id=comparison.id, dataset_name=comparison.dataset_name, targets=comparison.targets,
        jobs=[{"id": j.id, "device": j.device_name, "runtime": j.runtime, "state": j.state, "stage": j.stage,
               "error": j.error} for j in jobs],
        done=finished and filled, matrix=matrix, accuracy=accuracy, created_at=comparison.created_at,
    )


@registry.operation(
    api_blueprint, "/comparisons/<comparison_id>", "GET", scope="read", summary="A comparison and its matrix", tag="comparisons",
    responses={200: ComparisonOut}, errors=(404,),
)
def get_comparison(comparison_id: str) -> ComparisonOut:
    return _load(comparison_id)


def _load(comparison_id: str) -> ComparisonOut:
    with state().db.session() as session:
        comparison = session.get(Comparison, comparison_id)
        if comparison is None:
            raise not_found("comparison", comparison_id)
        return to_out(session, comparison)


@registry.operation(
    api_blueprint, "/comparisons/<comparison_id>/matrix.csv", "GET", scope="read", summary="The matrix as CSV",
    tag="comparisons", responses={200: None}, streams="text/csv", errors=(404,),
)
def get_comparison_csv(comparison_id: str) -> Response:
    """Rows: network specialised for a device; columns: its latency (ms) measured on each device."""
    out = _load(comparison_id)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    names = [f"{t['device']}:{t['runtime']}" for t in out.targets]
    writer.writerow(["specialised_for", *[f"latency_ms_on_{n}" for n in names], "test_accuracy"])
    for name, row, acc in zip(names, out.matrix, out.accuracy):
        writer.writerow([name, *["" if v is None else f"{v:.6g}" for v in row], "" if acc is None else acc])
    return Response(buffer.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="comparison-{comparison_id}.csv"'})
