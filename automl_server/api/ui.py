"""/api/v1 endpoints the web pages need beyond the resources: a dataset's
sample images as one PNG, and the latency range a device can reach for a
search space at a dataset's resolution. Also the browser's way in: the web
login keeps the API token in the (signed, HttpOnly) session cookie, and the
hook here presents it to the API's one token check as a bearer token.
"""
from __future__ import annotations

import hmac
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flask import Response, request, session
from pydantic import BaseModel, Field

from automl_server.api.blueprint import api_blueprint, registry
from automl_server.api.datasets import find_dataset
from automl_server.api.problems import ProblemError, not_found
from automl_server.api.schemas import NAME_PATTERN, JobBudget, Strict
from automl_server.db.engine import Database
from automl_server.db.models import Dataset
from automl_server.service_state import state

if TYPE_CHECKING:  # Pillow is imported when an image is drawn
    from PIL.ImageFont import FreeTypeFont, ImageFont

# Session keys written by the login page (web_pages.py).
SESSION_TOKEN = "api_token"
SESSION_CSRF = "csrf"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# Sample grids are drawn at least this many pixels per image (8x8 digits are unreadable otherwise).
_MIN_TILE_PX = 48
_MAX_GRID_CLASSES = 20


@api_blueprint.before_request
def _session_as_bearer() -> None:
    """A browser logged in through /login sends the session cookie instead of an
    Authorization header; its token then goes through the same check as a
    header's (unknown or revoked tokens are refused by api/auth.py). Registered
    at import, before api/auth.py's hook, so it runs first. A cookie is sent by
    the browser on its own, so writes must also carry the session's CSRF token."""
    if request.headers.get("Authorization"):
        return
    secret = session.get(SESSION_TOKEN)
    if not secret:
        return
    if request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent, str(session.get(SESSION_CSRF, ""))):
            raise ProblemError(403, "Forbidden", f"a browser request that changes data must send the page's "
                               f"{CSRF_HEADER} header; reload the page and try again", field=CSRF_HEADER,
                               slug="csrf")
    # The WSGI environ is what request.headers reads, so auth.py sees the header.
    request.environ["HTTP_AUTHORIZATION"] = f"Bearer {secret}"


# -- sample images ----------------------------------------------------------
class SamplesQuery(Strict):
    per_class: int = Field(4, ge=1, le=16, description="Images per class (one row per class).")


def _font() -> FreeTypeFont | ImageFont:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def render_sample_grid(x: np.ndarray, y: np.ndarray, classes: list[str], per_class: int) -> bytes:
    """A PNG with one row per class (its name, then up to ``per_class`` images),
    each image scaled up without smoothing so that small images stay legible."""
    from PIL import Image, ImageDraw

    shown = classes[:_MAX_GRID_CLASSES]
    height, width = int(x.shape[1]), int(x.shape[2])
    scale = max(1, math.ceil(_MIN_TILE_PX / max(min(height, width), 1)))
    tile_h, tile_w, gap, label_w = height * scale, width * scale, 4, 110
    grid = Image.new("RGB", (label_w + per_class * (tile_w + gap), len(shown) * (tile_h + gap) + gap), "white")
    draw = ImageDraw.Draw(grid)
    font = _font()
    rng = np.random.default_rng(0)  # the same samples on every request
    for row, name in enumerate(shown):
        top = gap + row * (tile_h + gap)
        label = name if len(name) <= 14 else name[:13] + "…"
        draw.text((4, top + tile_h // 2 - 8), label, fill="black", font=font)
        members = np.flatnonzero(y == row)
        picks: np.ndarray | list[int] = rng.choice(members, size=min(per_class, len(members)), replace=False) if len(members) else []
        for col, index in enumerate(sorted(picks)):
            pixels = x[index]
            image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
            image = image.convert("RGB").resize((tile_w, tile_h), Image.Resampling.NEAREST)
            grid.paste(image, (label_w + col * (tile_w + gap), top))
    out = io.BytesIO()
    grid.save(out, "PNG", optimize=True)
    return out.getvalue()


def _samples_png(settings: Any, row: Dataset, per_class: int) -> Path:
    """The grid for a dataset, drawn once and kept beside its file (datasets never change)."""
    from automl_server.datasets.ingest import DatasetRejected, load_arrays
    from automl_server.datasets.store import upload_limits

    path = settings.datasets_dir / row.id / f"samples-{per_class}.png"
    if path.exists():
        return path
    try:
        x, y, classes = load_arrays(settings.data_dir / row.file_path, row.format, upload_limits(settings))
    except (DatasetRejected, OSError) as exc:
        raise ProblemError(409, "Conflict", f"the stored file of dataset {row.name!r} cannot be read ({exc}); "
                           "delete it and upload it again", field="dataset", slug="conflict") from None
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(render_sample_grid(x, y, list(classes), per_class))
    tmp.replace(path)  # atomic: two first requests at once both end with a whole file
    return path


@registry.operation(
    api_blueprint, "/datasets/<key>/samples.png", "GET", scope="read", summary="Sample images of a dataset, per class",
    tag="datasets", query=SamplesQuery, responses={200: None}, streams="image/png", errors=(404, 409),
)
def dataset_samples(key: str, query: SamplesQuery) -> Response:
    """One PNG: a row per class (the first 20 classes) with its name and up to
    ``per_class`` images, scaled up so that small images stay visible."""
    from flask import send_file

    s = state()
    with s.db.session() as db_session:
        row = find_dataset(db_session, key)
        if row is None:
            raise not_found("dataset", key)
        path = _samples_png(s.settings, row, query.per_class)
    response = send_file(path, mimetype="image/png", max_age=3600)
    return response


# -- achievable latency range ----------------------------------------------------
class RangeQuery(Strict):
    dataset: str = Field(description="Dataset id or name: its resolution, classes and channels shape the network.")
    space: str = Field("proxyless-mobile", pattern=NAME_PATTERN, description="Search space name.")
    runtime: str | None = Field(None, description="One of the device's runtimes; default: its first.")


class AchievableRange(BaseModel):
    device: str
    runtime: str
    space: str
    dataset: str
    input_shape: list[int] = Field(description="[height, width, channels] the networks are built for.")
    profiled: bool = Field(description="Whether every op of the space is in the device's latency table.")
    ops_total: int
    ops_measured: int
    fastest_ms: float | None = Field(description="Predicted latency of the space's fastest network.")
    slowest_ms: float | None = Field(description="Predicted latency of the space's slowest network.")
    calibrated: bool = Field(description="Whether whole-network measurements calibrate the prediction.")
    message: str = Field(description="The range (or why there is none yet) in words.")


def achievable_range(db: Database, device: str, runtime: str | None, row: Dataset, space: str) -> AchievableRange:
    """The latency range (fastest, slowest network) of ``space`` on a device at
    the dataset's shape, by the function the job's profile stage records it
    with (jobs/profile.target_range_ms); ``profiled`` false while the latency
    table lacks ops (the job, or a profile-only job, measures them first)."""
    from automl_server.jobs.profile import target_range_ms
    from automl_server.profiling import ProfilingError, repository, resolve_target
    from search_spaces import get_space, space_keys

    try:
        target = resolve_target(db, device, runtime)
    except ProfilingError as exc:
        raise ProblemError(404 if "no device" in str(exc) else 422, "Invalid request", str(exc),
                           field="device" if "no device" in str(exc) else "runtime", slug="unknown-reference") from None
    try:
        layout = get_space(space).layout(row.image_height, max(len(row.classes), 1), row.channels)
    except ValueError as exc:
        raise ProblemError(422, "Invalid request", str(exc), field="space", slug="unknown-reference") from None
    keys = space_keys(layout)
    repo = repository(db)
    # find_target reads only: looking at a range must not create latency-table rows.
    records = [r for r in repo.find_target(device, target.runtime) if r.spec == target.spec]
    missing = repo.missing(records[0], keys) if records else keys
    base: dict[str, Any] = dict(device=device, runtime=target.runtime, space=space, dataset=row.name,
                input_shape=[row.image_height, row.image_width, row.channels], ops_total=len(keys),
                ops_measured=len(keys) - len(missing))
    if missing:
        return AchievableRange(
            **base, profiled=False, fastest_ms=None, slowest_ms=None, calibrated=False,
            message=f"not profiled yet: the job will profile it first ({len(missing)} of {len(keys)} "
                    f"operations of {space} still need measuring on {device})")
    fastest, slowest, lat = target_range_ms(db, target, layout)  # what the job's profile stage records
    return AchievableRange(
        **base, profiled=True, fastest_ms=fastest, slowest_ms=slowest,
        calibrated=lat.calibration is not None,
        message=f"networks of {space} on {device} ({target.runtime}) run in {fastest:.4g}-{slowest:.4g} ms")


@registry.operation(
    api_blueprint, "/devices/<name>/achievable-range", "GET", scope="read", summary="Latency range a device can reach",
    tag="devices", query=RangeQuery, responses={200: AchievableRange}, errors=(404,),
)
def device_achievable_range(name: str, query: RangeQuery) -> AchievableRange:
    """The predicted latency of the fastest and slowest network of a search
    space on this device at the dataset's input size, from the latency
    database; a target below the fastest fails the job's profile stage."""
    s = state()
    with s.db.session() as db_session:
        row = find_dataset(db_session, query.dataset)
        if row is None:
            raise not_found("dataset", query.dataset)
        db_session.expunge(row)
    return achievable_range(s.db, name, query.runtime, row, query.space)


# -- how long a job will take -------------------------------------------------------
RECENT_JOBS = 10


class EstimateQuery(JobBudget):
    dataset: str = Field(description="Dataset id or name: epochs cost in proportion to its images.")
    tune: bool = Field(True, description="Whether the job runs the tune stage (its trials count).")
    strategy: str = Field("gradient", max_length=100,
                          description="The search strategy: only recent jobs of the same strategy are counted "
                          "(an RL search scores sampled networks on the holdout every step; on a small dataset "
                          "that, not the training, sets its time).")
    baselines: bool = Field(False, description="Whether the job compares with the baselines (about one more "
                            "search and two more trainings): only recent jobs alike are counted.")


class DurationEstimate(BaseModel):
    device: str
    seconds: float | None = Field(description="Expected wall time of the job; null without recent jobs.")
    jobs_used: int = Field(description="Recent finished jobs on this device the estimate is drawn from.")
    seconds_per_unit: float | None = Field(description="Median seconds per image-epoch of those jobs.")
    units: int = Field(description="The job's image-epochs: budget epochs times the dataset's images.")
    message: str = Field(description="The estimate in words.")


def budget_epochs(budget: dict[str, Any], tune: bool) -> int:
    """Epochs a budget asks for: warm-up, search, tuning trials (when tuning) and training."""
    from automl_server.jobs.spec import Budget

    b = Budget.from_dict(budget)
    return b.warmup_epochs + b.search_epochs + (b.tune_trials * b.tune_epochs if tune else 0) + b.train_epochs


def _in_words(seconds: float) -> str:
    if seconds < 90:
        return f"{max(10, round(seconds / 10) * 10):.0f} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60):.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_duration(db: Database, device: str, images: int, budget: dict[str, Any], tune: bool,
                      minutes: float | None = None, strategy: str = "gradient",
                      baselines: bool = False) -> DurationEstimate:
    """The job's wall time from this service's recent finished search jobs on
    ``device``: the median of their seconds per image-epoch (budget epochs x
    dataset images) times this job's image-epochs; capped by the budget's
    minutes (plus what the recent jobs spent outside the capped stages, at most).
    Only jobs of the same strategy and baselines setting count: their cost per
    epoch differs (RL scores sampled networks on the holdout every step, which
    on a small dataset outweighs its training; the baselines stage costs about
    one more search and two trainings), so a median over a mix would mislead;
    with none alike, no estimate, and the message says which kind is missing."""
    from sqlalchemy import select

    from automl_server.db.models import Job, JobState
    from automl_server.jobs.spec import JobSpec

    units = budget_epochs(budget, tune) * max(images, 1)
    # Said in the message unless it is the default kind (what most jobs are).
    kind = f"{strategy} search" + (" with baselines" if baselines else "")
    alike = "" if kind == "gradient search" else f" like this one ({kind})"
    with db.session() as session:
        rows = session.scalars(
            select(Job).where(Job.device_name == device, Job.state == JobState.SUCCEEDED.value,
                              Job.started_at.is_not(None), Job.finished_at.is_not(None))
            .order_by(Job.finished_at.desc()).limit(RECENT_JOBS * 5))
        rates: list[float] = []
        for job in rows:
            if job.params.get("stop_after") or len(rates) >= RECENT_JOBS:
                continue  # a job ended early (profile only) says nothing about a whole one
            spec = JobSpec.from_params(job.params)
            if spec.strategy != strategy or spec.baselines != baselines:
                continue
            images_then = int((job.result.get("validate") or {}).get("num_samples") or 0)
            epochs = budget_epochs(job.params.get("budget") or {}, bool(job.params.get("tune", True)))
            seconds = (job.finished_at - job.started_at).total_seconds()  # type: ignore[operator]
            if images_then > 0 and epochs > 0 and seconds > 0:
                rates.append(seconds / (epochs * images_then))
    if not rates:
        return DurationEstimate(device=device, seconds=None, jobs_used=0, seconds_per_unit=None, units=units,
                                message=f"no recent jobs{alike} on {device} to estimate from")
    rate = float(np.median(rates))
    seconds = rate * units
    if minutes is not None:
        seconds = min(seconds, minutes * 60 * 1.2)
    plural = "job" if len(rates) == 1 else "jobs"
    return DurationEstimate(device=device, seconds=round(seconds, 1), jobs_used=len(rates),
                            seconds_per_unit=round(rate, 9), units=units,
                            message=f"about {_in_words(seconds)}, from {len(rates)} recent {plural}{alike} on {device}")


@registry.operation(
    api_blueprint, "/devices/<name>/duration-estimate", "GET", scope="read", summary="How long a job would take",
    tag="devices", query=EstimateQuery, responses={200: DurationEstimate}, errors=(404,),
)
def device_duration_estimate(name: str, query: EstimateQuery) -> DurationEstimate:
    """The expected wall time of a job with this budget on this device and
    dataset, from the device's recent finished jobs (their seconds per
    image-epoch); ``seconds`` null while the device has none."""
    from sqlalchemy import select

    from automl_server.db.models import Device

    s = state()
    with s.db.session() as db_session:
        if db_session.scalar(select(Device.id).where(Device.name == name)) is None:
            raise not_found("device", name)
        row = find_dataset(db_session, query.dataset)
        if row is None:
            raise not_found("dataset", query.dataset)
        images = row.num_samples
    budget = query.model_dump(exclude={"dataset", "tune", "minutes", "strategy", "baselines"})
    return estimate_duration(s.db, name, images, budget, query.tune, query.minutes, query.strategy, query.baselines)


# -- profiling coverage (the device farm page) -------------------------------------
def profile_coverage(db: Database, device: str, shapes: list[tuple[int, int, int, str]]) -> list[dict[str, Any]]:
    """Per runtime of ``device`` and per search space, how many of the ops a
    search needs are measured, for each dataset shape (height, classes,
    channels, dataset name); only entries with at least one op measured."""
    from automl_server.profiling import repository
    from search_spaces import list_spaces, space_keys

    repo = repository(db)
    rows = []
    for record in repo.find_target(device):
        measured = set(repo.lut_ms(record))
        if not measured:
            continue
        for space in list_spaces():
            for height, num_classes, channels, dataset in shapes:
                try:
                    keys = space_keys(space.layout(height, num_classes, channels))
                except ValueError:
                    continue
                done = sum(1 for k in keys if k in measured)
                if done:
                    rows.append({"runtime": record.backend, "runtime_version": record.backend_version,
                                 "threads": record.threads, "space": space.name, "dataset": dataset,
                                 "input": f"{height}x{height}x{channels}", "ops_measured": done,
                                 "ops_total": len(keys)})
    return rows
