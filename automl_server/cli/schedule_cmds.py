"""`automl schedule`: an IOS schedule of any ONNX model on a device, through the server's API
(POST /api/v1/schedules, then polled until the device has measured it)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from automl_server.cli.base import _echo_json, json_option, main, server_option, token_option
from automl_server.cli.client import ApiClient

POLL_S = 1.0


def _describe(result: dict[str, Any]) -> list[str]:
    lines = [f"{result['num_stages']} stages for {result['ops']} operators "
             f"({result['merges']} merges, at most {result['max_groups']} groups side by side):"]
    for number, stage in enumerate(result["stages"], 1):
        groups = " | ".join(" -> ".join(group) for group in stage["groups"])
        lines.append(f"  {number:3}. {stage['kind']:8} {groups}")
    latency = result["latency_ms"]
    lines.append("measured latency (ms per inference, side by side):")
    for name in ("sequential", "greedy", "ort_sequential", "ort_parallel", "ios"):
        value = latency.get(name)
        lines.append(f"  {name:13} {value:10.4f}" if value is not None else f"  {name:13} not measured")
    if result.get("speedup"):
        lines.append(f"speed-up of IOS over sequential: {result['speedup']:.2f}x")
    lines.append(f"deployed: {result['deployed']}" + (f" ({result['note']})" if result.get("note") else ""))
    if result.get("advice"):
        lines.append(f"note: {result['advice']}")
    lines.append(f"stages measured {result['stages_measured']}, reused from the latency database "
                 f"{result['stages_reused']}, device seconds {result['device_seconds']:.1f}")
    return lines


@main.command("schedule")
@click.option("--device", required=True, help="Device name.")
@click.option("--runtime", help="Runtime on the device: onnxruntime or pytorch (default: its first).")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The ONNX model to schedule.")
@click.option("--timeout", "timeout_s", type=float, default=3600.0, show_default=True,
              help="Seconds to wait for the device's measurements.")
@server_option
@token_option
@json_option
def schedule(device: str, runtime: str | None, model_path: Path, timeout_s: float, server: str | None,
             token: str | None, as_json: bool) -> None:
    """Schedule an ONNX model's operators (IOS) with latencies measured on DEVICE; print the schedule
    and its measured speed-up over sequential execution."""
    client = ApiClient(server, token)
    form = {"device": device, **({"runtime": runtime} if runtime else {})}
    with model_path.open("rb") as handle:
        response = client.request("POST", "/schedules", files={"file": (model_path.name, handle)}, data=form,
                                  timeout=600)
    out = response.json()
    location = response.headers.get("Location", f"/api/v1/schedules/{out['id']}")
    path = location.split("/api/v1", 1)[-1]
    ends = time.monotonic() + timeout_s
    last = ""
    while out["state"] == "running":
        message = out.get("progress", {}).get("message", "")
        if message != last and not as_json:
            click.echo(message, err=True)
            last = message
        if time.monotonic() > ends:
            raise click.ClickException(f"schedule {out['id']} still running after {timeout_s:.0f} s; "
                                       f"poll {location}")
        time.sleep(POLL_S)
        out = client.json("GET", path)
    if as_json:
        _echo_json(out)
        return
    if out["state"] != "succeeded":
        raise click.ClickException(f"schedule {out['id']} failed: {out.get('error')}")
    for line in _describe(out["result"]):
        click.echo(line)
