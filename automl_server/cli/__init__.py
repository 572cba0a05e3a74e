"""The `automl` command line: run the service, and drive it from scripts.

Every listing and result command takes ``--json`` for machine-readable output.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from automl_server.cli.base import _echo_json, _table, json_option, main, server_option, token_option
from automl_server.cli.client import ApiClient
from automl_server.settings import get_settings
from device_agents.cli import AgentOptions, device_options, run_agent


# -- running the service ----------------------------------------------------
@main.command()
@click.option("--host", help="Bind address (AUTOML_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port (AUTOML_PORT, default 8000).")
@click.option("--no-worker", is_flag=True, help="Do not start the embedded Celery worker.")
@click.option("--no-agent", is_flag=True, help="Do not start the local CPU device agent.")
def serve(host: str | None, port: int | None, no_worker: bool, no_agent: bool) -> None:
    """Serve the web UI and REST API with an embedded worker and local agent."""
    from dataclasses import replace

    from automl_server.serve import serve as run_server

    settings = get_settings()
    if host:
        settings = replace(settings, host=host)
    if port:
        settings = replace(settings, port=port)
    run_server(settings, worker=not no_worker, agent=not no_agent)
    # Stopped, children included: leave now. Python's own teardown of what the server imported
    # (torch and the rest: some 300,000 objects) took 4-7 s more on a loaded 2-core machine, past
    # `docker stop`'s 10 s with the worker's grace period; there is nothing left for it to do.
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@main.command()
@click.option("--queues", "-Q", default="default,search", show_default=True, help="Comma-separated queues.")
@click.option("--concurrency", "-c", type=int, help="Worker processes (AUTOML_WORKER_CONCURRENCY).")
@click.option("--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "solo", "threads"]))
@click.option("--hostname", "-n", default="worker@%h", show_default=True)
def worker(queues: str, concurrency: int | None, pool: str, hostname: str) -> None:
    """Start a Celery worker (e.g. on a GPU server: --queues search)."""
    from automl_server.serve import exit_with_parent
    from automl_server.worker import celery_app

    exit_with_parent()  # when started by `automl serve`
    argv = ["worker", "--queues", queues, "--pool", pool, "--hostname", hostname, "--loglevel", "INFO",
            "--concurrency", str(concurrency or get_settings().worker_concurrency)]
    celery_app.worker_main(argv)


@main.command()
@device_options
@server_option
@token_option
def agent(server: str | None, token: str | None, **device: Any) -> None:
    """Run a device agent: registers the device, sends heartbeats and measures
    what arrives on the Celery queue device.NAME (one measurement at a time).

    The same agent as `automl-agent` (device_agents.cli), with the broker and
    the service's address taken from this service's settings."""
    settings = get_settings()
    run_agent(AgentOptions(**device), server_url=server or settings.resolved_server_url,
              broker_url=settings.resolved_broker_url, result_backend=settings.resolved_result_backend,
              token=token, interval_s=settings.heartbeat_interval_s)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the migrations (safe to run again)."""
    from automl_server.db.engine import get_database
    from automl_server.db.migrate import upgrade

    settings = get_settings()
    settings.ensure_dirs()
    database = get_database(settings.resolved_database_url)
    click.echo(f"database at revision {upgrade(database, revision)}")


@main.group()
def tokens() -> None:
    """API tokens."""


@tokens.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, metavar="SCOPE",
              help="read, submit, admin or agent:DEVICE; repeat for several (default: read and submit).")
@json_option
def tokens_create(name: str, scopes: tuple[str, ...], as_json: bool) -> None:
    """Create a token; its secret is printed once and stored only hashed.

    Scopes: read (every GET), submit (datasets, jobs, comparisons, schedules),
    admin (everything: deleting datasets, retiring devices, the audit log) and
    agent:DEVICE (register device DEVICE and send its heartbeats)."""
    from automl_server.auth import DEFAULT_SCOPES, BadScope, create_token, normalise_scopes
    from automl_server.db.engine import get_database
    from automl_server.db.migrate import require_current_schema

    try:
        chosen = normalise_scopes(scopes or DEFAULT_SCOPES)
    except BadScope as exc:
        raise click.BadParameter(str(exc), param_hint="--scope") from None
    database = get_database(get_settings().resolved_database_url)
    require_current_schema(database)
    with database.session() as session:
        created = create_token(session, name, chosen)
    if as_json:
        _echo_json({"id": created.id, "name": created.name, "token": created.secret, "scopes": list(created.scopes)})
    else:
        click.echo(created.secret)
        click.echo(f"token {created.name!r} ({' '.join(created.scopes)}) created; it is shown only once", err=True)


@tokens.command("list")
@json_option
def tokens_list(as_json: bool) -> None:
    """List tokens (names, prefixes, scopes; never secrets), from the database."""
    from sqlalchemy import select

    from automl_server.db.engine import get_database
    from automl_server.db.migrate import require_current_schema
    from automl_server.db.models import ApiToken

    database = get_database(get_settings().resolved_database_url)
    require_current_schema(database)
    with database.session() as session:
        rows: list[dict[str, Any]] = [{"id": t.id, "name": t.name, "prefix": t.prefix, "scopes": t.scopes.split(),
                 "created_at": t.created_at.isoformat(),
                 "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
                 "revoked": t.revoked_at is not None}
                for t in session.scalars(select(ApiToken).order_by(ApiToken.created_at))]
    if as_json:
        _echo_json(rows)
        return
    _table([[r["name"], r["prefix"], " ".join(r["scopes"]), r["last_used_at"] or "-", "yes" if r["revoked"] else "no"]
            for r in rows], ["NAME", "PREFIX", "SCOPES", "LAST USED", "REVOKED"])


@main.command("audit-log")
@click.option("--kind", type=click.Choice(["token-use", "device"]), help="Only token use, or only device changes.")
@click.option("--device", help="Only changes of this device.")
@click.option("--limit", type=int, default=50, show_default=True, help="Newest N events.")
@server_option
@token_option
@json_option
def audit_log(kind: str | None, device: str | None, limit: int, server: str | None, token: str | None,
              as_json: bool) -> None:
    """The audit log, newest first: API requests made with a token and device
    changes (needs a token with the admin scope when the server asks for tokens).
    Not `automl audit JOB_ID`, which is a job's privacy audit."""
    params = {k: v for k, v in (("kind", kind), ("device", device)) if v}
    rows: list[dict[str, Any]] = []
    for row in ApiClient(server, token).paged("/audit", "events", page_size=max(1, min(limit, 500)), params=params):
        rows.append(row)
        if len(rows) >= limit:
            break
    if as_json:
        _echo_json(rows)
        return
    _table([[r["created_at"], r["kind"], r["action"], r["token_name"] or "-", r["token_prefix"] or "-",
             f"{r['method'] or ''} {r['path'] or ''}".strip() or "-", r["status"] or "-", r["address"] or "-",
             r["subject"] or "-"] for r in rows],
           ["TIME", "KIND", "ACTION", "TOKEN", "PREFIX", "REQUEST", "STATUS", "ADDRESS", "DEVICE"])


# -- client commands -------------------------------------------------------
@main.group()
def datasets() -> None:
    """Datasets."""


@datasets.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Dataset name (default: the file name).")
@click.option("--description", default="")
@server_option
@token_option
@json_option
def datasets_upload(path: Path, name: str | None, description: str, server: str | None, token: str | None,
                    as_json: bool) -> None:
    """Upload a .zip of class folders of images, or an .npz with x and y."""
    dataset = ApiClient(server, token).upload(path, name, description)
    if as_json:
        _echo_json(dataset)
    else:
        click.echo(f"dataset {dataset['name']} ({dataset['id']}): {dataset['num_samples']} samples, "
                   f"{dataset['num_classes']} classes, {dataset['image_height']}x{dataset['image_width']}"
                   f"x{dataset['channels']}")


@datasets.command("list")
@server_option
@token_option
@json_option
def datasets_list(server: str | None, token: str | None, as_json: bool) -> None:
    """List datasets."""
    rows = list(ApiClient(server, token).paged("/datasets", "datasets"))
    if as_json:
        _echo_json(rows)
        return
    _table([[d["name"], d["id"], d["num_samples"], d["num_classes"],
             f"{d['image_height']}x{d['image_width']}x{d['channels']}", d["source"]] for d in rows],
           ["NAME", "ID", "SAMPLES", "CLASSES", "IMAGE", "SOURCE"])


@main.group()
def devices() -> None:
    """Devices of the farm."""


@devices.command("list")
@server_option
@token_option
@json_option
def devices_list(server: str | None, token: str | None, as_json: bool) -> None:
    """List devices with their status (online/offline)."""
    rows = list(ApiClient(server, token).paged("/devices", "devices"))
    if as_json:
        _echo_json(rows)
        return
    _table([[d["name"], d["kind"], d["status"], ",".join(r["name"] for r in d["runtimes"]),
             d["last_heartbeat_at"] or "-"] for d in rows], ["NAME", "KIND", "STATUS", "RUNTIMES", "LAST HEARTBEAT"])


@devices.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="Retire it even with queued or running jobs (they are cancelled).")
@server_option
@token_option
@json_option
def devices_delete(name: str, force: bool, server: str | None, token: str | None, as_json: bool) -> None:
    """Retire device NAME. Refused while it has queued or running jobs unless
    --force; its latency tables are kept for a device that registers under
    the same name with reuse_latency (`automl agent --reuse-latency`)."""
    retired = ApiClient(server, token).json("DELETE", f"/devices/{name}", params={"force": "true" if force else "false"})
    if as_json:
        _echo_json(retired)
        return
    click.echo(f"device {retired['name']} retired")
    if retired["cancelled_jobs"]:
        click.echo(f"cancelled jobs: {', '.join(retired['cancelled_jobs'])}")
    if retired["latency_archive"]:
        click.echo(f"{retired['latency_targets_kept']} latency target(s) kept as {retired['latency_archive']}; "
                   f"an agent started with --reuse-latency for {name} takes them back")


@main.command("pipelines")
@server_option
@token_option
@json_option
def pipelines_list(server: str | None, token: str | None, as_json: bool) -> None:
    """List the server's training pipelines and their settings (for --pipeline and --param KEY.SETTING=VALUE)."""
    rows = ApiClient(server, token).json("GET", "/pipelines")["pipelines"]
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['name']}: {row['title']} - {row['description']}")
        properties = row["settings_schema"].get("properties", {})
        for name, default in row["defaults"].items():
            help_text = properties.get(name, {}).get("description", "")
            click.echo(f"  --param {row['params_key']}.{name}={json.dumps(default)}  {help_text}")


# Importing these registers `automl jobs`, `spaces`, `search`, `profile` and `latency`.
from automl_server.cli import engine_cmds, jobs_cmds, latency_cmds  # noqa: E402  (they import cli.base, not this module)
from automl_server.cli import audit_cmds, schedule_cmds  # noqa: E402

__all__ = ["main", "engine_cmds", "jobs_cmds", "latency_cmds", "schedule_cmds"]

if __name__ == "__main__":
    sys.exit(main())
