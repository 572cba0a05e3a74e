"""/api/v1/schedules: an IOS schedule of any uploaded ONNX model on a device (deploy-only use).

Why a resource of its own and not a job: a job starts from a dataset and a
search space, and its plan (validate, profile, search, ...) has nothing to do
for a finished model. A schedule is an operation resource kept as files in
the artifacts folder (``schedules/<id>``: the model, its state, the result),
so no table and no migration is needed. ``POST`` stores the model and answers
202 with its location; each ``GET`` takes the next step of
``jobs.schedule.advance`` (the same two phases as the job's schedule stage:
candidate stages the device's latency table lacks are sent to its agent, then
the DP runs and the model is timed under each schedule) and answers 202 with
the progress until the result is there (200).
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from flask import request
from pydantic import BaseModel, Field

from automl_server.api.blueprint import api_blueprint, registry
from automl_server.api.problems import ProblemError, not_found
from automl_server.service_state import state

_UPLOAD_FORM: dict[str, dict[str, Any]] = {
    "file": {"type": "string", "format": "binary", "x-required": True, "description": "The ONNX model."},
    "device": {"type": "string", "minLength": 1, "pattern": r"\S", "x-required": True, "description": "Device name."},
    "runtime": {"type": "string", "description": "One of the device's runtimes (onnxruntime or pytorch); "
                                                 "default: its first."},
}


class ScheduleOut(BaseModel):
    id: str
    state: str = Field(description="running, succeeded or failed.")
    device: str
    runtime: str
    progress: dict[str, Any] = Field(default_factory=dict, description="While running: message, fraction, "
                                     "stages measured of those to measure, ETA.")
    result: dict[str, Any] | None = Field(None, description="The schedule's stages, groups and merges, the "
                                          "measured latency of sequential, greedy, ONNX Runtime parallel and IOS, "
                                          "the speed-up, which one is deployed, stages measured vs reused.")
    error: str | None = None


def _dir(schedule_id: str) -> Path:
    if not schedule_id.isalnum():
        raise not_found("schedule", schedule_id)
    return state().settings.artifacts_dir / "schedules" / schedule_id


@registry.operation(api_blueprint, "/schedules", "POST", scope="submit", summary="Schedule an ONNX model on a device (IOS)",
                    tag="schedules", responses={201: ScheduleOut, 202: ScheduleOut}, multipart=_UPLOAD_FORM, errors=(404, 413, 507))
def create_schedule() -> tuple[ScheduleOut, int, dict[str, str]]:
    from automl_server.profiling import ProfilingError, resolve_target

    s = state()
    upload = request.files.get("file")
    device = (request.form.get("device") or "").strip()
    if upload is None or not device:
        raise ProblemError(422, "Schedule rejected", "send multipart/form-data with the ONNX model as 'file' "
                           "and the device name as 'device'", field="file" if upload is None else "device",
                           slug="schedule-rejected")
    try:
        target = resolve_target(s.db, device, request.form.get("runtime") or None)
    except ProfilingError as exc:
        raise ProblemError(422, "Schedule rejected", str(exc), field="device", slug="schedule-rejected") from None
    # The weights stay here (the agent times stages on filled-in ones, jobs/schedule.py): any upload
    # the server takes is accepted, a graph too large to ship without them is refused when it is sent.
    limit = s.settings.max_upload_bytes
    data = upload.read(limit + 1)
    upload.close()
    if len(data) > limit:
        raise ProblemError(413, "Model too large", f"ONNX models up to {limit} bytes (AUTOML_MAX_UPLOAD_BYTES) "
                           "are accepted")
    _check_onnx(data)
    schedule_id = secrets.token_hex(8)
    directory = _dir(schedule_id)
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(data)
    meta = {"device": target.device_name, "runtime": target.runtime}
    (directory / "meta.json").write_text(json.dumps(meta))
    out = _step(schedule_id)
    return out, 202 if out.state == "running" else 201, {"Location": f"/api/v1/schedules/{schedule_id}"}


def _check_onnx(data: bytes) -> None:
    import onnx

    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the client's file
        raise ProblemError(422, "Schedule rejected", f"'file' is not a valid ONNX model: {exc}", field="file",
                           slug="schedule-rejected") from None


@registry.operation(api_blueprint, "/schedules/<schedule_id>", "GET", scope="read", summary="A schedule's progress or result",
                    tag="schedules", responses={200: ScheduleOut, 202: ScheduleOut}, errors=(404,))
def get_schedule(schedule_id: str) -> tuple[ScheduleOut, int]:
    out = _step(schedule_id)
    return out, 202 if out.state == "running" else 200


def _step(schedule_id: str) -> ScheduleOut:
    from automl_server.jobs.schedule import Pending, ScheduleFailed, advance
    from automl_server.profiling import ProfilingError, resolve_target

    s = state()
    directory = _dir(schedule_id)
    if not (directory / "meta.json").exists():
        raise not_found("schedule", schedule_id)
    meta = json.loads((directory / "meta.json").read_text())
    base = {"id": schedule_id, "device": meta["device"], "runtime": meta["runtime"]}
    if "result" in meta or "error" in meta:
        done = "succeeded" if "result" in meta else "failed"
        return ScheduleOut(**base, state=done, result=meta.get("result"), error=meta.get("error"))
    try:
        target = resolve_target(s.db, meta["device"], meta["runtime"])
        meta["result"] = advance(s.db, s.settings, s.celery, target, directory / "model.onnx", directory,
                                 f"schedules/{schedule_id}")
    except Pending as pending:
        return ScheduleOut(**base, state="running",
                           progress={"message": pending.message, "fraction": pending.fraction, **pending.data})
    except (ScheduleFailed, ProfilingError) as exc:
        meta["error"] = str(exc)
    (directory / "meta.json").write_text(json.dumps(meta))
    return _step(schedule_id)
