"""The web UI for product teams: server-rendered pages over the same database
and REST API that pipelines use; the pages' JavaScript (web/static) calls the
API for everything that changes data or updates live.

Pages: jobs (home), datasets, device farm, new search, a job, compare, a comparison, login.
In non-local mode (Settings.auth_required) every page needs a login with an
API token, kept in the session cookie; api/ui.py lets the API accept it.
"""
from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Flask, abort, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload
from werkzeug.wrappers import Response  # what redirect() returns; flask's Response is a subclass

from automl_server.api.problems import ProblemError
from automl_server.api.ui import SESSION_CSRF, SESSION_TOKEN, profile_coverage
from automl_server.db.models import Comparison, Dataset, Device, Job, JobState
from automl_server.service_state import ServiceState, state

web = Blueprint("web", __name__)

JOBS_PER_PAGE = 25
_OPEN_ENDPOINTS = {"web.login", "static"}
DEVICE_KINDS = {"cpu": "CPU server", "gpu": "GPU server", "android": "Android phone", "raspberry-pi": "Raspberry Pi"}
STATE_WORDS = {"queued": "waiting to start", "running": "running", "succeeded": "done", "failed": "failed",
               "cancelled": "cancelled"}


class _SessionInterface(SecureCookieSessionInterface):
    """The session cookie is Secure whenever the page came over HTTPS (directly
    or through a proxy that says so), and on plain HTTP otherwise, so that the
    login works both behind TLS and on a trusted local network."""

    def get_cookie_secure(self, app: Flask) -> bool:
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure or forwarded == "https"


def _state() -> ServiceState:
    return state()


def _logged_in() -> bool:
    from automl_server.auth import READ, allows, token_scopes, verify_token

    secret = session.get(SESSION_TOKEN)
    if not secret:
        return False
    with _state().db.session() as db_session:
        token = verify_token(db_session, secret)
        # The pages show what the API's GETs do: they need the read scope.
        return token is not None and allows(token_scopes(token), READ)


@web.before_request
def _require_login() -> Response | None:
    if request.endpoint in _OPEN_ENDPOINTS or not _state().settings.auth_required:
        return None
    if _logged_in():
        return None
    session.pop(SESSION_TOKEN, None)
    return redirect(url_for("web.login", next=request.full_path.rstrip("?")))


@web.app_context_processor
def _page_context() -> dict[str, Any]:
    if SESSION_CSRF not in session:
        session[SESSION_CSRF] = secrets.token_urlsafe(32)
    auth = _state().settings.auth_required
    return {"csrf_token": session[SESSION_CSRF], "auth_required": auth,
            "logged_in": bool(session.get(SESSION_TOKEN)), "state_words": STATE_WORDS, "device_kinds": DEVICE_KINDS}


# -- login ------------------------------------------------------------------
def _safe_next(target: str | None) -> str:
    # Only paths of this site: never an absolute or scheme-relative URL (open redirect).
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("web.jobs_page")


@web.route("/login", methods=["GET", "POST"])
def login() -> Any:
    from automl_server.auth import verify_token
    from automl_server.login_throttle import failed_logins

    error = None
    next_url = _safe_next(request.values.get("next"))
    throttle, client = failed_logins(), request.remote_addr or "unknown"
    wait_s = throttle.wait_s(client) if request.method == "POST" else 0
    if wait_s:
        error = f"Too many tokens were not accepted from this computer. Please wait {wait_s} seconds and try again."
    elif request.method == "POST":
        secret = request.form.get("token", "").strip()
        if not secret:
            error = "Paste your API token into the box. An administrator creates one with: automl tokens create NAME"
        else:
            from automl_server.auth import READ, allows, token_scopes

            with _state().db.session() as db_session:
                token = verify_token(db_session, secret)
                scopes = token_scopes(token) if token is not None else ()
            if token is None:
                throttle.failed(client)
                error = ("This token was not accepted: it is unknown or was revoked. "
                         "Check that you copied all of it, or ask for a new one.")
            elif not allows(scopes, READ):
                error = (f"This token may not read (its scopes: {', '.join(scopes)}); the pages need a token "
                         "with the read scope: automl tokens create NAME --scope read --scope submit")
            else:
                session.clear()
                session.permanent = True
                session[SESSION_TOKEN] = secret
                session[SESSION_CSRF] = secrets.token_urlsafe(32)
                return redirect(next_url)
    if wait_s:
        return render_template("login.html", error=error, next_url=next_url), 429, {"Retry-After": str(wait_s)}
    status = 401 if error else 200
    return render_template("login.html", error=error, next_url=next_url), status


@web.post("/logout")
def logout() -> Response:
    if request.form.get("csrf") != session.get(SESSION_CSRF):
        abort(400)
    session.clear()
    return redirect(url_for("web.login"))


# -- jobs (home) ---------------------------------------------------------------
def job_summary(job: Job) -> dict[str, Any]:
    """What a row of the jobs table shows, from the job's stage outputs."""
    result = job.result or {}
    report = result.get("report") or {}
    accuracy = (report.get("accuracy") or {}).get("test")
    if accuracy is None:
        accuracy = (result.get("train") or {}).get("test_accuracy")
    measured = (report.get("latency") or {}).get("measured_ms")
    if measured is None:
        measured = (result.get("verify") or {}).get("measured_ms")
    return {"id": job.id, "state": job.state, "stage": job.stage, "progress": job.progress, "error": job.error,
            "dataset": job.dataset_name, "device": job.device_name, "runtime": job.runtime, "space": job.space,
            "target_ms": job.latency_target_ms, "accuracy": accuracy, "measured_ms": measured,
            "created_at": job.created_at, "done": JobState(job.state).is_terminal}


@web.get("/")
def jobs_page() -> Any:
    from automl_server.db.models import device_status
    from automl_server.api.pagination import newest_first_page

    s = _state()
    state_filter = request.args.get("state") or None
    device_filter = request.args.get("device") or None
    page_token = request.args.get("page_token") or None
    if state_filter not in (None, *STATE_WORDS):
        state_filter = None
    stmt = select(Job)
    if state_filter:
        stmt = stmt.where(Job.state == state_filter)
    if device_filter:
        stmt = stmt.where(Job.device_name == device_filter)
    notice = None
    with s.db.session() as db_session:
        try:
            rows, next_token = newest_first_page(db_session, stmt, Job, JOBS_PER_PAGE, page_token)
        except ProblemError:
            notice = "That page link has expired; here is the first page."
            rows, next_token = newest_first_page(db_session, stmt, Job, JOBS_PER_PAGE, None)
            page_token = None
        jobs = [job_summary(j) for j in rows]
        devices = list(db_session.scalars(select(Device).order_by(Device.name)))
        farm = [{"name": d.name, "kind": d.kind, "status": device_status(d, s.settings.heartbeat_timeout_s)}
                for d in devices]
        has_datasets = (db_session.scalar(select(func.count()).select_from(Dataset)) or 0) > 0
    filters = {k: v for k, v in (("state", state_filter), ("device", device_filter)) if v}
    next_url = url_for("web.jobs_page") + "?" + urlencode({**filters, "page_token": next_token}) if next_token else None
    first_url = url_for("web.jobs_page") + ("?" + urlencode(filters) if filters else "") if page_token else None
    return render_template("jobs.html", jobs=jobs, farm=farm, filters=filters, next_url=next_url,
                           first_url=first_url, notice=notice, has_datasets=has_datasets)


# -- datasets ------------------------------------------------------------------
@web.get("/datasets")
def datasets_page() -> str:
    with _state().db.session() as db_session:
        rows = list(db_session.scalars(select(Dataset).order_by(Dataset.created_at.desc()).limit(200)))
        datasets: list[dict[str, Any]] = [{
            "id": d.id, "name": d.name, "source": d.source, "format": d.format, "description": d.description,
            "num_samples": d.num_samples, "classes": list(d.classes), "class_counts": dict(d.class_counts),
            "height": d.image_height, "width": d.image_width, "channels": d.channels,
            "uniform_size": d.uniform_size, "size_bytes": d.size_bytes, "created_at": d.created_at,
        } for d in rows]
    for d in datasets:
        top = max(d["class_counts"].values(), default=1) or 1
        d["bars"] = [{"name": c, "count": int(d["class_counts"].get(c, 0)),
                      "fraction": int(d["class_counts"].get(c, 0)) / top} for c in d["classes"][:40]]
    return render_template("datasets.html", datasets=datasets)


# -- device farm -----------------------------------------------------------------
TEMPERATURE_KEYS = ("temperature_c", "temp_c", "cpu_temperature_c", "soc_temperature_c")


@web.get("/devices")
def devices_page() -> str:
    from automl_server.db.models import device_status

    s = _state()
    with s.db.session() as db_session:
        devices = list(db_session.scalars(select(Device).options(selectinload(Device.runtimes)).order_by(Device.name)))
        queues = dict(db_session.execute(
            select(Job.device_name, func.count()).where(Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
            .group_by(Job.device_name)).all())
        shapes = [(h, len(c), ch, name) for name, h, c, ch in db_session.execute(
            select(Dataset.name, Dataset.image_height, Dataset.classes, Dataset.channels)
            .order_by(Dataset.created_at.desc()).limit(10)).all()]
        rows: list[dict[str, Any]] = []
        for d in devices:
            temperature = next((d.info[k] for k in TEMPERATURE_KEYS if isinstance(d.info.get(k), (int, float))), None)
            rows.append({"name": d.name, "kind": d.kind, "description": d.description,
                         "status": device_status(d, s.settings.heartbeat_timeout_s),
                         "last_heartbeat_at": d.last_heartbeat_at, "runtimes": [(r.name, r.version) for r in d.runtimes],
                         "queue": int(queues.get(d.name, 0)), "temperature_c": temperature, "info": d.info})
    # One distinct shape per (height, classes, channels): the ops a search needs depend on nothing else.
    unique_shapes = list({(h, n, c): (h, n, c, name) for h, n, c, name in reversed(shapes)}.values())
    for row in rows:
        row["coverage"] = profile_coverage(s.db, row["name"], unique_shapes)
    return render_template("devices.html", devices=rows, timeout_s=s.settings.heartbeat_timeout_s)


# -- new search -------------------------------------------------------------------
@web.get("/new")
def new_search_page() -> str:
    from automl_server.api.schemas import JobBudget
    from automl_server.api.pipelines import to_out as pipeline_out
    from automl_server.engine.strategies import strategies as registered_strategies
    from automl_server.engine.train.registry import pipelines as registered_pipelines
    from search_spaces import list_spaces

    s = _state()
    with s.db.session() as db_session:
        datasets = [{"id": d.id, "name": d.name, "shape": f"{d.image_height}x{d.image_width}x{d.channels}",
                     "classes": len(d.classes), "samples": d.num_samples}
                    for d in db_session.scalars(select(Dataset).order_by(Dataset.name).limit(500))]
        from automl_server.db.models import device_status

        devices = [{"name": d.name, "kind": d.kind, "status": device_status(d, s.settings.heartbeat_timeout_s),
                    "runtimes": [r.name for r in d.runtimes]}
                   for d in db_session.scalars(select(Device).options(selectinload(Device.runtimes))
                                               .order_by(Device.name))]
    spaces = [{"name": sp.name, "description": sp.description} for sp in list_spaces()]
    # Every registered pipeline with its settings (the form renders a control per setting).
    pipelines = [{**pipeline_out(p).model_dump(mode="json"), "controls": setting_controls(p.settings_schema())}
                 for p in registered_pipelines().values()]
    budget = {name: field.default for name, field in JobBudget.model_fields.items() if name != "minutes"}
    search_strategies = [{"name": st.name, "title": st.title, "description": st.description}
                         for st in registered_strategies().values()]
    # Without ?device=, the first online device is preselected: an offline one
    # (a retired phone, a junk registration) would only make the job wait.
    first_online = next((d["name"] for d in devices if d["status"] == "online"), "")
    chosen = {"dataset": request.args.get("dataset", ""), "device": request.args.get("device", "") or first_online}
    return render_template("new.html", datasets=datasets, devices=devices, spaces=spaces, pipelines=pipelines,
                           strategies=search_strategies, budget=budget, chosen=chosen)


def setting_controls(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """One form control per setting of a pipeline, from its JSON Schema: a
    choice list for an enum, a checkbox for a flag, a number box with the
    schema's bounds, or a text box; an optional setting may be left empty."""
    controls = []
    for name, prop in schema.get("properties", {}).items():
        options = [o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"]
        kind = options[0] if options else {}
        control: dict[str, Any] = {"name": name, "label": prop.get("title", name), "help": prop.get("description", ""),
                                   "default": prop.get("default"), "optional": len(options) < len(prop.get("anyOf", [prop]))}
        if "enum" in kind or "const" in kind:
            control.update(kind="select", options=list(kind.get("enum", [kind.get("const")])))
        elif kind.get("type") == "boolean":
            control.update(kind="checkbox")
        elif kind.get("type") in ("integer", "number"):
            control.update(kind=kind["type"], min=kind.get("minimum", kind.get("exclusiveMinimum")),
                           max=kind.get("maximum", kind.get("exclusiveMaximum")))
        else:
            control.update(kind="text")
        controls.append(control)
    return controls


# -- one job ----------------------------------------------------------------------
def _layout_for(job: Job, dataset: Dataset | None) -> dict[str, Any] | None:
    """The job's space at its input shape: the cells (with candidates) and fixed layers the diagram draws."""
    from search_spaces import get_space

    shape = (job.result.get("validate") or {}).get("image_shape")
    num_classes = (job.result.get("validate") or {}).get("num_classes")
    if shape is None and dataset is not None:
        shape, num_classes = [dataset.image_height, dataset.image_width, dataset.channels], len(dataset.classes)
    if shape is None or num_classes is None:
        return None
    try:
        layout = get_space(job.space).layout(int(shape[0]), int(num_classes), int(shape[2]))
    except ValueError:
        return None
    return {
        "space": layout.space, "resolution": layout.resolution, "num_classes": layout.num_classes,
        "in_channels": layout.in_channels,
        "fixed": [{"name": f.name, "in_ch": f.in_ch, "out_ch": f.out_ch, "stride": f.stride, "input_hw": f.input_hw,
                   "output_hw": f.output_hw, "kernel": f.kernel} for f in layout.fixed],
        "cells": [{"index": c.index, "stage": c.stage, "in_ch": c.in_ch, "out_ch": c.out_ch, "stride": c.stride,
                   "input_hw": c.input_hw, "output_hw": c.output_hw, "candidates": list(c.candidates)}
                  for c in layout.cells],
    }


@web.get("/jobs/<job_id>")
def job_page(job_id: str) -> str:
    from automl_server.api.jobs import to_out
    from automl_server.jobs.stages import get_stage, plan_of, stage_names

    with _state().db.session() as db_session:
        job = db_session.get(Job, job_id)
        if job is None:
            abort(404)
        dataset = db_session.get(Dataset, job.dataset_id) if job.dataset_id else None
        titles = {name: get_stage(name).title for name in stage_names()}  # a stage no longer registered shows its name
        stages = [{"name": name, "title": titles.get(name, name)} for name in plan_of(job)]
        data = {"job": to_out(job).model_dump(mode="json"), "stages": stages, "layout": _layout_for(job, dataset)}
        summary = job_summary(job)
    return render_template("job.html", job=summary, data=data)


# -- compare ----------------------------------------------------------------------
@web.get("/compare")
def compare_page() -> str:
    from automl_server.api.comparisons import to_out

    with _state().db.session() as db_session:
        comparisons = [to_out(db_session, c).model_dump(mode="json") for c in db_session.scalars(
            select(Comparison).order_by(Comparison.created_at.desc()).limit(10))]
        points = []
        for job in db_session.scalars(select(Job).where(Job.state == JobState.SUCCEEDED.value)
                                      .order_by(Job.created_at.desc()).limit(500)):
            row = job_summary(job)
            if row["accuracy"] is not None and row["measured_ms"] is not None:
                points.append({"job": job.id, "device": f"{job.device_name} ({job.runtime})",
                               "accuracy": row["accuracy"], "measured_ms": row["measured_ms"],
                               "target_ms": job.latency_target_ms, "dataset": job.dataset_name, "space": job.space})
    return render_template("compare.html", comparisons=comparisons, points=points)


@web.get("/comparisons/<comparison_id>")
def comparison_page(comparison_id: str) -> str:
    """One comparison: its jobs, the specialisation matrix and the accuracy
    against the latency on each device, refreshed by comparison.js while it runs."""
    from automl_server.api.comparisons import to_out

    with _state().db.session() as db_session:
        comparison = db_session.get(Comparison, comparison_id)
        if comparison is None:
            abort(404)
        data = to_out(db_session, comparison).model_dump(mode="json")
    return render_template("comparison.html", comparison=data)


def init_app(app: Flask) -> None:
    app.session_interface = _SessionInterface()
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      PERMANENT_SESSION_LIFETIME=timedelta(hours=12))
    app.register_blueprint(web)
