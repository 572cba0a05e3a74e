"""`automl jobs submit|status|cancel|wait`."""
from __future__ import annotations

import json
import uuid
from typing import Any

import click
from tqdm import tqdm

from automl_server.cli import _echo_json, json_option, main, server_option, token_option
from automl_server.cli.client import ApiClient


@main.group()
def jobs() -> None:
    """Jobs."""


def _summary(job: dict[str, Any]) -> str:
    stage = f" stage {job['stage']}" if job.get("stage") else ""
    error = f": {job['error']}" if job.get("error") else ""
    return f"job {job['id']} {job['state']}{stage} {job['progress'] * 100:.0f}%{error}"


@jobs.command("submit")
@click.option("--dataset", required=True, help="Dataset id or name.")
@click.option("--device", required=True, help="Device name.")
@click.option("--runtime", help="Runtime on the device (default: its first).")
@click.option("--target-ms", "latency_target_ms", type=float, required=True, help="Latency target in ms.")
@click.option("--space", default="proxyless-mobile", show_default=True)
@click.option("--pipeline", default="standard", show_default=True,
              type=click.Choice(["standard", "fedgkt", "delayed-sgd", "sparse-update"]))
@click.option("--param", "params", multiple=True, help="KEY=VALUE (VALUE parsed as JSON when it can be).")
@click.option("--idempotency-key", help="Default: a new random key, so this command is safe to retry.")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job to finish, with a progress bar.")
@server_option
@token_option
@json_option
def submit(dataset: str, device: str, runtime: str | None, latency_target_ms: float, space: str, pipeline: str,
           params: tuple[str, ...], idempotency_key: str | None, wait_: bool, server: str | None,
           token: str | None, as_json: bool) -> None:
    """Submit a job."""
    client = ApiClient(server, token)
    body = {"dataset": dataset, "device": device, "latency_target_ms": latency_target_ms, "space": space,
            "pipeline": pipeline, "params": _parse_params(params)}
    if runtime:
        body["runtime"] = runtime
    job = client.json("POST", "/jobs", json=body,
                      headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex})
    if wait_:
        job = _wait(client, job["id"], quiet=as_json)
    if as_json:
        _echo_json(job)
    else:
        click.echo(_summary(job))
    if wait_ and job["state"] != "succeeded":
        raise SystemExit(1)


def _parse_params(params: tuple[str, ...]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        try:
            parsed[key] = json.loads(value)
        except ValueError:
            parsed[key] = value
    return parsed


@jobs.command("status")
@click.argument("job_id")
@server_option
@token_option
@json_option
def status(job_id: str, server: str | None, token: str | None, as_json: bool) -> None:
    """Show a job."""
    job = ApiClient(server, token).json("GET", f"/jobs/{job_id}")
    _echo_json(job) if as_json else click.echo(_summary(job))


@jobs.command("cancel")
@click.argument("job_id")
@server_option
@token_option
@json_option
def cancel(job_id: str, server: str | None, token: str | None, as_json: bool) -> None:
    """Cancel a queued or running job."""
    job = ApiClient(server, token).json("POST", f"/jobs/{job_id}/cancel")
    _echo_json(job) if as_json else click.echo(_summary(job))


@jobs.command("wait")
@click.argument("job_id")
@server_option
@token_option
@json_option
def wait(job_id: str, server: str | None, token: str | None, as_json: bool) -> None:
    """Follow a job's live events with a progress bar until it ends; exit 1 unless it succeeded."""
    client = ApiClient(server, token)
    job = _wait(client, job_id, quiet=as_json)
    _echo_json(job) if as_json else click.echo(_summary(job))
    if job["state"] != "succeeded":
        raise SystemExit(1)


def _wait(client: ApiClient, job_id: str, *, quiet: bool) -> dict[str, Any]:
    last_id = 0
    with tqdm(total=100, unit="%", disable=quiet, desc=job_id[:8], bar_format="{l_bar}{bar}| {n:.0f}% {postfix}") as bar:
        while True:
            # The stream ends when the job does; reconnect from the last event on a dropped connection.
            try:
                for event in client.stream_events(job_id, after=last_id):
                    last_id = event["id"]
                    progress = event["data"].get("progress")
                    if progress is not None:
                        bar.update(progress * 100 - bar.n)
                    bar.set_postfix_str(event["message"][:60])
            except (OSError, click.ClickException) as exc:
                if isinstance(exc, click.ClickException) and "cannot reach" not in exc.message:
                    raise
            job = client.json("GET", f"/jobs/{job_id}")
            if job["done"]:
                if job["state"] == "succeeded":
                    bar.update(100 - bar.n)
                return job
