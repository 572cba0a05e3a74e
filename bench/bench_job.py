"""The push-button job end to end, the way a user runs it: `automl serve` on
embedded defaults (SQLite, the embedded Celery worker, the local CPU agent),
a job submitted over the REST API, followed to the end.

Prints the wall time of every stage, the test accuracy, and the predicted
and measured latency of the exported model with their ratio. With no
``--target-ms``, a first job with ``stop_after: profile`` reads the space's
achievable range on this CPU, and the target is placed inside it
(``--target-frac`` of the way from the fastest to the slowest network), so
that the target is feasible and binding.

    .venv/bin/python bench/bench_job.py                       # digits, tiny space, default budget
    .venv/bin/python bench/bench_job.py --space proxyless-mobile --target-frac 0.5
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(url: str, job_id: str, timeout_s: float, *, quiet: bool = False) -> dict[str, Any]:
    """The job once done; a line per change of state, stage or progress unless ``quiet``
    (a grid of jobs would print thousands)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        job: dict[str, Any] = requests.get(f"{url}/jobs/{job_id}", timeout=30).json()
        line = f"  {job['state']:<9} {job['stage'] or '':<9} {job['progress'] * 100:5.1f}%"
        if line != last and not quiet:
            print(line, flush=True)
        last = line
        if job["done"]:
            return job
        time.sleep(2)
    raise SystemExit(f"job {job_id} did not finish within {timeout_s:.0f} s")


def submit(url: str, body: dict[str, Any]) -> str:
    """POST a job; its id. A refusal ends the bench with the service's reason."""
    reply = requests.post(f"{url}/jobs", timeout=60, json=body)
    if reply.status_code >= 400:
        raise SystemExit(f"submitting {body} was refused: {reply.status_code} {reply.text}")
    return str(reply.json()["id"])


def achievable_range(url: str, base: dict[str, Any], timeout_s: float, *,
                     quiet: bool = False) -> tuple[float, float]:
    """(fastest, slowest) ms of the space on the job's device: a profile-only job's reading."""
    probe = submit(url, {**base, "latency_target_ms": 1e3, "stop_after": "profile"})
    profiled = wait(url, probe, timeout_s, quiet=quiet)
    if profiled["state"] != "succeeded":
        raise SystemExit(f"profiling {base.get('dataset')} / {base.get('space')} failed: {profiled['error']}")
    low, high = profiled["result"]["profile"]["achievable_ms"]
    return float(low), float(high)


def start_serve(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``automl serve`` on embedded defaults in ``data_dir`` (its log: serve.log there) and its API's URL."""
    port = free_port()
    env = {**os.environ, "AUTOML_DATA_DIR": str(data_dir), "AUTOML_PORT": str(port)}
    server = subprocess.Popen([sys.executable, "-m", "automl_server.cli", "serve"], env=env, cwd=ROOT,
                              stdout=open(data_dir / "serve.log", "w"), stderr=subprocess.STDOUT)
    return server, f"http://127.0.0.1:{port}/api/v1"


def wait_for_agent(url: str, data_dir: Path) -> None:
    """Until the server answers and a device's agent is online (3 minutes at most)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            devices = requests.get(f"{url}/devices", timeout=5).json()["devices"]
            if any(d["status"] == "online" for d in devices):
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise SystemExit(f"the server or its agent did not start; see {data_dir / 'serve.log'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--runtime", default="onnxruntime")
    parser.add_argument("--target-ms", type=float)
    parser.add_argument("--target-frac", type=float, default=0.5)
    parser.add_argument("--budget", default="{}", help="JSON budget, e.g. '{\"train_epochs\": 20}'")
    parser.add_argument("--timeout-s", type=float, default=3600)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="automl-bench-job-"))
    server, url = start_serve(data_dir)
    try:
        wait_for_agent(url, data_dir)
        base = {"dataset": args.dataset, "device": "local-cpu", "runtime": args.runtime, "space": args.space,
                "budget": json.loads(args.budget)}
        target = args.target_ms
        if target is None:
            print(f"profiling {args.space} on local-cpu ({args.runtime}) to read the achievable range")
            low, high = achievable_range(url, base, args.timeout_s)
            target = low + args.target_frac * (high - low)
            print(f"achievable {low:.4g}-{high:.4g} ms -> target {target:.4g} ms")
        started = time.monotonic()
        job = requests.post(f"{url}/jobs", timeout=60, json={**base, "latency_target_ms": target}).json()
        done = wait(url, job["id"], args.timeout_s)
        wall = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(timeout=60)
    if done["state"] != "succeeded":
        raise SystemExit(f"job {done['state']}: {done['error']}")
    report = done["result"]["report"]
    lat = report["latency"]
    print(f"\njob on {args.dataset} / {args.space} / local-cpu ({args.runtime}), budget {args.budget}")
    print(f"{'stage':<10}{'seconds':>10}")
    seconds_of = report["cost"]["stage_seconds"]  # JSON objects come back key-sorted: print in job order
    for stage in ("validate", "profile", "search", "tune", "train", "export", "verify", "report"):
        if stage in seconds_of:
            print(f"{stage:<10}{seconds_of[stage]:>10.1f}")
    print(f"{'total':<10}{wall:>10.1f}  (wall, submit to done)")
    print(f"test accuracy        {report['accuracy']['test'] * 100:.2f}% on {report['accuracy']['test_samples']} images")
    print(f"latency target       {report['latency_target_ms']:.4g} ms (achievable {lat['achievable_ms'][0]:.4g}-"
          f"{lat['achievable_ms'][1]:.4g} ms)")
    fit = f", fit's rel. RMSE {lat['calibration_rel_rmse']:.3f}" if lat.get("calibration_rel_rmse") is not None else ""
    print(f"predicted            {lat['predicted_ms']:.4g} ms ({'calibrated' if lat['calibrated'] else 'LUT sum'}{fit})")
    print(f"load average         {os.getloadavg()[0]:.2f} (1 min; this machine has {os.cpu_count()} CPUs)")
    print(f"measured             {lat['measured_ms']:.4g} ms at the target's pace, {lat['raw_measured_ms']:.4g} ms "
          f"by the clock (the exported file: {lat['measured_file']})")
    print(f"measured/predicted   {lat['measured_over_predicted']:.3f}  within 10%: {lat['within_10pct']}  "
          f"meets target: {lat['meets_target']}")


if __name__ == "__main__":
    main()
