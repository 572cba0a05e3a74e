"""`automl jobs submit|status|cancel|wait`."""
from __future__ import annotations

import json
import uuid
from typing import Any

import click
from tqdm import tqdm

from automl_server.cli.base import _echo_json, json_option, main, server_option, token_option
from automl_server.cli.client import ApiClient


@main.group()
def jobs() -> None:
    """Jobs."""


def _summary(job: dict[str, Any]) -> str:
    stage = f" stage {job['stage']}" if job.get("stage") else ""
    error = f": {job['error']}" if job.get("error") else ""
    missed = " (LATENCY TARGET MISSED)" if (job.get("result") or {}).get("target_met") is False else ""
    return f"job {job['id']} {job['state']}{missed}{stage} {job['progress'] * 100:.0f}%{error}"


@jobs.command("submit")
@click.option("--dataset", required=True, help="Dataset id or name.")
@click.option("--device", required=True, help="Device name.")
@click.option("--runtime", help="Runtime on the device (default: its first).")
@click.option("--target-ms", "latency_target_ms", type=float,
              help="Latency target in ms (default: the middle of the achievable range, set once the device is profiled).")
@click.option("--space", default="proxyless-mobile", show_default=True)
@click.option("--strategy", default="gradient", show_default=True,
              help="Architecture-search strategy: gradient (binarized gates) or rl (REINFORCE, which scores 10 "
              "sampled networks on up to 1,000 held-out images every architecture step: on a small dataset that "
              "scoring sets its time), or a registered one.")
@click.option("--pipeline", default="standard", show_default=True,
              help="Training pipeline; `automl pipelines` lists those the server offers, with their settings.")
@click.option("--warmup-epochs", type=click.IntRange(0, 1000), help="Budget: warm-up epochs (default: the server's).")
@click.option("--search-epochs", type=click.IntRange(1, 1000), help="Budget: search epochs (default: the server's).")
@click.option("--tune-trials", type=click.IntRange(0, 200), help="Budget: Optuna trials (default: the server's).")
@click.option("--tune-epochs", type=click.IntRange(1, 200), help="Budget: epochs per trial (default: the server's).")
@click.option("--train-epochs", type=click.IntRange(1, 2000), help="Budget: training epochs (default: the server's).")
@click.option("--minutes", type=click.FloatRange(min=0.1), help="Budget: wall-clock cap for search+tune+train.")
@click.option("--no-tune", is_flag=True, help="Skip the Optuna tuning stage.")
@click.option("--stop-after", help="End the job after this stage (validate, profile, search, tune, train, "
              "export, verify, report, or a stage a pipeline adds).")
@click.option("--webhook-url", help="Receives a signed POST on every state change.")
@click.option("--param", "params", multiple=True, help="Option KEY=VALUE: seed, batch_size, calibration_networks, "
              "device_wait_s, final_fit (train+holdout or train), baselines (true: compare with random search and a "
              "uniform network), warmup_sampling (uniform or progressive); a pipeline's setting as "
              "KEY.SETTING=VALUE, e.g. fedgkt.clients=8 (see `automl pipelines`).")
@click.option("--idempotency-key", help="Default: a new random key, so this command is safe to retry.")
@click.option("--wait", "wait_", is_flag=True, help="Follow the job with a progress bar per stage; print the report.")
@server_option
@token_option
@json_option
def submit(dataset: str, device: str, runtime: str | None, latency_target_ms: float | None, space: str, strategy: str,
           pipeline: str, warmup_epochs: int | None, search_epochs: int | None, tune_trials: int | None,
           tune_epochs: int | None, train_epochs: int | None, minutes: float | None, no_tune: bool,
           stop_after: str | None, webhook_url: str | None, params: tuple[str, ...], idempotency_key: str | None,
           wait_: bool, server: str | None, token: str | None, as_json: bool) -> None:
    """Submit a push-button job: profile, search, tune, train, export, verify, report."""
    client = ApiClient(server, token)
    budget = {k: v for k, v in {"warmup_epochs": warmup_epochs, "search_epochs": search_epochs,
                                "tune_trials": tune_trials, "tune_epochs": tune_epochs,
                                "train_epochs": train_epochs, "minutes": minutes}.items() if v is not None}
    body: dict[str, Any] = {"dataset": dataset, "device": device,
                            "space": space, "strategy": strategy, "pipeline": pipeline, "budget": budget,
                            "tune": not no_tune, "params": _parse_params(params)}
    for key, value in (("latency_target_ms", latency_target_ms), ("runtime", runtime), ("stop_after", stop_after),
                       ("webhook_url", webhook_url)):
        if value:
            body[key] = value
    job = client.json("POST", "/jobs", json=body,
                      headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex})
    if job.get("webhook_secret") and not as_json:
        click.echo(f"webhook secret (shown once): {job['webhook_secret']}", err=True)
    if wait_:
        job = _wait(client, job["id"], quiet=as_json)
    if as_json:
        _echo_json(job)
    else:
        click.echo(_summary(job))
        if wait_ and job["state"] == "succeeded" and "report" in job["result"]:
            click.echo(format_report(job["result"]["report"]))
    if wait_ and job["state"] != "succeeded":
        raise SystemExit(1)


def format_report(report: dict[str, Any]) -> str:
    lat, acc, model, cost = report["latency"], report["accuracy"], report["model"], report["cost"]
    lines = [
        f"network for {report['device']} ({report['runtime']}), space {report['space']}:",
        f"  test accuracy     {acc['test'] * 100:.2f}% ({acc['test_samples']} images)",
        f"  latency measured  {lat['measured_ms']:.4g} ms, predicted {lat['predicted_ms']:.4g} ms "
        f"(x{lat['measured_over_predicted']:.3f}), target {report['latency_target_ms']:g} ms "
        f"({'met' if lat['meets_target'] else 'missed'}; achievable {lat['achievable_ms'][0]:.4g}-"
        f"{lat['achievable_ms'][1]:.4g} ms)",
        *([f"  interval          predicted {lat['predicted_interval_ms'][0]:.4g}-{lat['predicted_interval_ms'][1]:.4g} ms "
            f"(the predictor's held-out error, 95th percentile)"] if lat.get("predicted_interval_ms") else []),
        *([f"  fitted on device  {len(report['fit']['tries'])} network(s) measured untrained: " + ", ".join(
            f"{t['measured_ms']:.4g} ms" for t in report["fit"]["tries"]) + f"; kept try {report['fit']['kept_try']} "
            f"(expected {report['fit']['estimated_ms']:.4g} ms: {'inside' if report['fit']['inside_window'] else 'outside'} the window "
            f"{report['fit']['window_ms'][0]:.4g}-{report['fit']['window_ms'][1]:.4g} ms)"]
          if report.get("fit") else []),
        *([f"  networks tried    {len(lat['tries'])}: " + ", ".join(
            f"{t['measured_ms']:.4g} ms ({'met' if t['meets_target'] else 'missed'})" for t in lat["tries"])]
          if len(lat.get("tries") or []) > 1 else []),
        *([f"  TARGET MISSED     {report.get('target_missed') or 'the network measured over the target'}"]
          if report.get("target_met") is False else []),
        f"  size              {model['parameters']:,} parameters, {model['macs']:,} MACs, "
        f"ONNX {model['onnx_bytes']:,} bytes",
        f"  cost              {cost['device_hours'] * 3600:.0f} device-s, "
        f"{(cost['cpu_hours'] + cost['gpu_hours']) * 3600:.0f} compute-s",
        f"  blocks            {' '.join(report['arch']['blocks'])}",
    ]
    lines += [f"  download {kind:<8} {url}" for kind, url in report["downloads"].items()]
    return "\n".join(lines)


@jobs.command("report")
@click.argument("job_id")
@server_option
@token_option
@json_option
def report(job_id: str, server: str | None, token: str | None, as_json: bool) -> None:
    """Show a finished job's report."""
    data = ApiClient(server, token).json("GET", f"/jobs/{job_id}/report")
    _echo_json(data) if as_json else click.echo(format_report(data))


@jobs.command("rerun")
@click.argument("job_id")
@click.option("--wait", "wait_", is_flag=True, help="Follow the new job.")
@server_option
@token_option
@json_option
def rerun(job_id: str, wait_: bool, server: str | None, token: str | None, as_json: bool) -> None:
    """Run a finished job again with the same settings."""
    client = ApiClient(server, token)
    job = client.json("POST", f"/jobs/{job_id}/rerun")
    if wait_:
        job = _wait(client, job["id"], quiet=as_json)
    _echo_json(job) if as_json else click.echo(_summary(job))


def _parse_params(params: tuple[str, ...]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = value
        *groups, name = key.split(".")
        target = parsed
        for group in groups:  # "fedgkt.clients=8" -> {"fedgkt": {"clients": 8}}
            nested = target.setdefault(group, {})
            if not isinstance(nested, dict):
                raise click.BadParameter(f"{item!r}: {group!r} is set to a value and cannot also hold settings",
                                         param_hint="--param")
            target = nested
        target[name] = decoded
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
    """One progress bar per stage, fed by the job's event stream (ETA in the bar's postfix)."""
    last_id = 0
    bars: dict[str, tqdm] = {}

    def bar_for(stage: str) -> tqdm:
        if stage not in bars:
            for other in bars.values():
                other.update(100 - other.n)
            bars[stage] = tqdm(total=100, unit="%", disable=quiet, desc=f"{stage:<8}", position=len(bars),
                               bar_format="{desc} {bar}| {n:3.0f}% {postfix}", leave=True)
        return bars[stage]

    try:
        while True:
            # The stream ends when the job does; reconnect from the last event on a dropped connection.
            try:
                for event in client.stream_events(job_id, after=last_id):
                    last_id = event["id"]
                    stage, data = event.get("stage"), event["data"]
                    if not stage or event["kind"] not in ("progress", "state"):
                        continue
                    bar = bar_for(stage)
                    if "stage_progress" in data:
                        bar.update(data["stage_progress"] * 100 - bar.n)
                    eta = f" ETA {data['eta_s']:.0f}s" if data.get("eta_s") is not None else ""
                    bar.set_postfix_str(event["message"][:50] + eta)
            except (OSError, click.ClickException) as exc:
                if isinstance(exc, click.ClickException) and "cannot reach" not in exc.message:
                    raise
            job = client.json("GET", f"/jobs/{job_id}")
            if job["done"]:
                if job["state"] == "succeeded":
                    for bar in bars.values():
                        bar.update(100 - bar.n)
                return job
    finally:
        for bar in bars.values():
            bar.close()
