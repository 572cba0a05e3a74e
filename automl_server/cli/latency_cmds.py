"""`automl profile` and `automl latency predict|measure|export|import`.

These run where the service's database and broker are (the server host):
they read and write the latency database directly and send work to device
agents through the broker.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from tqdm import tqdm

from automl_server.cli.base import _echo_json, json_option, main
from automl_server.settings import Settings, get_settings

if TYPE_CHECKING:  # the database, the profiler and torch load when a command runs, not for --help
    from automl_server.db.engine import Database
    from automl_server.profiling import Target
    from search_spaces import Arch

device_option = click.option("--device", required=True, help="Device name.")
runtime_option = click.option("--runtime", help="Runtime on the device (default: its first).")
threads_option = click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True)


def _context(device: str, runtime: str | None, threads: int) -> tuple[Settings, Database, Target]:
    from automl_server.db.engine import get_database
    from automl_server.db.migrate import require_current_schema
    from automl_server.profiling import ProfilingError, resolve_target

    settings = get_settings()
    db = get_database(settings.resolved_database_url)
    require_current_schema(db)
    try:
        return settings, db, resolve_target(db, device, runtime, threads)
    except ProfilingError as exc:
        raise click.UsageError(str(exc)) from None


def _offline_since(db: Database, device: str) -> str | None:
    """The device's last heartbeat when it is offline, else None."""
    from automl_server.profiling import offline_since

    return offline_since(db, device, get_settings().heartbeat_timeout_s)


def _require_online(db: Database, device: str) -> None:
    last = _offline_since(db, device)
    if last is not None:
        raise click.ClickException(f"device {device!r} is offline (last heartbeat: {last}); "
                                   f"start its agent: automl agent --device {device}")


@main.command()
@device_option
@click.option("--space", required=True)
@click.option("--resolution", type=click.IntRange(8, 1024), required=True)
@click.option("--num-classes", type=click.IntRange(2, 100_000), default=10, show_default=True)
@click.option("--in-channels", type=click.Choice(["1", "3"]), default="3", show_default=True)
@runtime_option
@threads_option
@click.option("--timeout", type=float, default=1800, show_default=True,
              help="Give up after this many seconds without a new measurement.")
@json_option
def profile(device: str, space: str, resolution: int, num_classes: int, in_channels: str, runtime: str | None,
            threads: int, timeout: float, as_json: bool) -> None:
    """Measure every op of a space that the device's latency table lacks."""
    from automl_server.celery_app import make_celery
    from automl_server.profiling import dispatch_profiling, missing_ops, op_method, repository

    settings, db, target = _context(device, runtime, threads)
    try:
        missing = missing_ops(db, target, space, resolution, num_classes, int(in_channels))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    total = len(missing)
    if total:
        _require_online(db, device)
        dispatch_profiling(make_celery(settings), target, missing, op_method(settings))
    repo = repository(db)
    record = repo.target(target.spec)
    failed: dict[str, str] = {}
    last_progress = time.monotonic()
    with tqdm(total=total, unit="op", disable=as_json or total == 0, desc=f"profile {device}") as bar:
        remaining = list(missing)
        while remaining:
            time.sleep(1.0)
            still = set(repo.missing(record, remaining))
            # Measured and failed: do not wait for it.
            failed.update(repo.failures(record, [k for k in remaining if k in still]))
            done = [k for k in remaining if k not in still or k in failed]
            if done:
                last_progress = time.monotonic()
                bar.update(len(done))
            remaining = [k for k in remaining if k not in done]
            last_heartbeat = _offline_since(db, device) if remaining else None
            if last_heartbeat is not None:
                # Never hang on a device that went away: say so; its queued tasks stay on
                # device.<name> and run when the agent comes back.
                raise click.ClickException(
                    f"device {device!r} went offline (last heartbeat: {last_heartbeat}) with {len(remaining)} of "
                    f"{total} ops still to measure; they stay queued and run when its agent is back "
                    f"(automl agent --device {device}); run this command again to follow them")
            if remaining and time.monotonic() - last_progress > timeout:
                raise click.ClickException(f"no measurement arrived for {timeout:.0f} s; {len(remaining)} ops still "
                                           f"missing on {device!r}: is its agent running (automl agent --device "
                                           f"{device}) and reaching the broker?")
    summary = {"device": device, "runtime": target.runtime, "space": space, "resolution": resolution,
               "measured": total - len(failed), "failed": failed, "already_present": total == 0}
    if as_json:
        _echo_json(summary)
    else:
        click.echo(f"{summary['measured']} ops measured on {device} ({target.runtime}), {len(failed)} failed"
                   if total else f"nothing to measure: {device} ({target.runtime}) has every op of {space} "
                                 f"at {resolution}px")
        for key, error in failed.items():
            click.echo(f"  failed {key}: {error}", err=True)
    if failed:
        raise SystemExit(1)


@main.group()
def latency() -> None:
    """The latency database: predict, measure, export, import."""


def _arch(path: Path) -> Arch:
    from search_spaces import Arch

    try:
        return Arch.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--arch") from None


@latency.command("predict")
@device_option
@click.option("--arch", "arch_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@runtime_option
@threads_option
@json_option
def latency_predict(device: str, arch_path: Path, runtime: str | None, threads: int, as_json: bool) -> None:
    """Predict a network's latency on a device from its latency table."""
    from automl_server.profiling import predictor
    from latency_db import MissingLatencyError
    from search_spaces import arch_keys

    _, db, target = _context(device, runtime, threads)
    arch = _arch(arch_path)
    model = predictor(db, target)
    keys = arch_keys(arch)
    try:
        latency_ms, lut_sum = model.predict(keys), model.lut_sum(keys)
    except MissingLatencyError as exc:
        missing = model.missing(keys)
        raise click.ClickException(f"{exc}; {len(missing)} ops are missing: automl profile --device {device} "
                                   f"--space {arch.space} --resolution {arch.resolution}") from None
    result = {"latency_ms": round(latency_ms, 6), "lut_sum_ms": round(lut_sum, 6),
              "calibrated": model.calibration is not None, "device": device, "runtime": target.runtime}
    _echo_json(result) if as_json else click.echo(f"{latency_ms:.4f} ms "
                                                  f"({'calibrated' if result['calibrated'] else 'LUT sum'})")


@latency.command("measure")
@device_option
@click.option("--arch", "arch_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@runtime_option
@threads_option
@click.option("--timeout", type=float, default=600, show_default=True)
@json_option
def latency_measure(device: str, arch_path: Path, runtime: str | None, threads: int, timeout: float,
                    as_json: bool) -> None:
    """Measure a whole network end to end on the device (kept for calibration)."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from automl_server.celery_app import make_celery
    from automl_server.profiling import dispatch_network_measurement, network_method, paced_measurement

    settings, db, target = _context(device, runtime, threads)
    arch = _arch(arch_path)
    _require_online(db, device)
    pending = dispatch_network_measurement(make_celery(settings), target, arch, network_method(settings))
    try:
        payload = pending.get(timeout=timeout, disable_sync_subtasks=False)
    except CeleryTimeout:
        raise click.ClickException(f"no result from {device!r} within {timeout:.0f} s; is its agent running?") from None
    if "error" in payload:
        raise click.ClickException(f"measurement on {device!r} failed: {payload['error']}")
    paced = paced_measurement(db, payload)
    raw = paced.get("raw_measured_ms", paced["measured_ms"])
    evidence = (paced.get("stats") or {}).get("method") or {}
    result = {"latency_ms": round(paced["measured_ms"], 6), "raw_latency_ms": round(raw, 6), "device": device,
              "runtime": target.runtime, "stats": paced["stats"], "reliable": evidence.get("reliable"),
              "unreliable_reason": evidence.get("unreliable_reason")}
    flag = (f"; UNRELIABLE after {evidence.get('attempts', 1)} attempt(s): {evidence['unreliable_reason']}"
            if evidence.get("reliable") is False else "")
    _echo_json(result) if as_json else click.echo(
        f"{paced['measured_ms']:.4f} ms measured on {device} at its pace ({raw:.4f} ms by the clock just now){flag}")


@latency.command("export")
@device_option
@runtime_option
@threads_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def latency_export(device: str, runtime: str | None, threads: int, out: Path) -> None:
    """Write the device's latency table as a reference-format YAML LUT."""
    from automl_server.profiling import repository

    _, db, target = _context(device, runtime, threads)
    repo = repository(db)
    count = repo.export_yaml(repo.target(target.spec), out)
    click.echo(f"{count} ops written to {out}")


@latency.command("import")
@device_option
@runtime_option
@threads_option
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def latency_import(device: str, runtime: str | None, threads: int, path: Path) -> None:
    """Load a reference-format YAML LUT into the device's latency table (all or nothing)."""
    from automl_server.profiling import repository
    from latency_db import LutFormatError

    _, db, target = _context(device, runtime, threads)
    repo = repository(db)
    try:
        count = repo.import_yaml(repo.target(target.spec), path)
    except LutFormatError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{count} ops imported for {device} ({target.runtime})")
