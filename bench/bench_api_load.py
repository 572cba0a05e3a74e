"""The REST API under concurrent clients, on loopback: `automl serve` (waitress,
no worker, no agent) against a load generator of N client threads with
keep-alive connections, each bounded in time and in requests.

Two runs, side by side:
  1. `GET /jobs` (a page of 50) alone: the issue's goal (>= 500 req/s, p99 <= 250 ms, no error);
  2. a mix: the list, a job's detail, its events (paged), the device list, and
     job submissions with Idempotency-Key, several clients sending the same key.

Prints requests/s, p50/p99 per endpoint, errors, the CPU share of the load
generator and of the server (both on the same cores), and checks that the
duplicate submissions created one job per key.

    .venv/bin/python bench/bench_api_load.py                      # 50 clients, 10 s per run
    .venv/bin/python bench/bench_api_load.py --clients 50 --seconds 30 --max-requests 50000
    .venv/bin/python bench/bench_api_load.py --token   # tokens required: every request authenticated and audited

The broker is `memory://` in the server process by default (jobs stay queued,
no worker): what is measured is the API, not the broker; --broker redis://...
measures submissions through Redis.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench_job import free_port  # noqa: E402

JOB = {"dataset": "digits", "device": "local-cpu", "latency_target_ms": 5.0, "space": "tiny"}


@dataclass
class Tally:
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    submissions: list[tuple[str, int, str]] = field(default_factory=list)  # key, status, job id
    lock: threading.Lock = field(default_factory=threading.Lock)


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    conn.request(method, path, body=data, headers={**AUTH, **hdrs, **(headers or {})})
    response = conn.getresponse()
    return response.status, response.read()


AUTH: dict[str, str] = {}  # {"Authorization": "Bearer ..."} with --token


def _client(port: int, plan: list[str], job_ids: list[str], keys: list[str], deadline: float, budget: list[int],
            tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.monotonic() < deadline:
        with tally.lock:
            if budget[0] <= 0:
                break
            budget[0] -= 1
        kind = rng.choice(plan)
        job_id = rng.choice(job_ids)
        key = rng.choice(keys) if keys else ""
        method, path, body, headers = {
            "list": ("GET", "/api/v1/jobs?page_size=50", None, None),
            "detail": ("GET", f"/api/v1/jobs/{job_id}", None, None),
            "events": ("GET", f"/api/v1/jobs/{job_id}/events", None, None),
            "devices": ("GET", "/api/v1/devices", None, None),
            "submit": ("POST", "/api/v1/jobs", JOB, {"Idempotency-Key": key}),
        }[kind]
        started = time.perf_counter()
        try:
            status, payload = _request(conn, method, path, body, headers)
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            status, payload = 0, b""
        elapsed_ms = (time.perf_counter() - started) * 1000
        ok = status in (200, 202)
        with tally.lock:
            tally.latencies_ms[kind].append(elapsed_ms)
            if not ok:
                tally.errors[kind] += 1
            if kind == "submit" and ok:
                tally.submissions.append((key, status, json.loads(payload)["id"]))
    conn.close()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def run(port: int, server_pid: int, plan: list[str], clients: int, seconds: float, max_requests: int,
        job_ids: list[str], keys: list[str]) -> tuple[Tally, dict[str, float]]:
    tally, budget = Tally(), [max_requests]
    deadline = time.monotonic() + seconds
    own0, server0, wall0 = resource.getrusage(resource.RUSAGE_SELF), _cpu_s(server_pid), time.monotonic()
    threads = [threading.Thread(target=_client, args=(port, plan, job_ids, keys, deadline, budget, tally, i))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - wall0
    own1 = resource.getrusage(resource.RUSAGE_SELF)
    cores = os.cpu_count() or 1
    usage = {
        "wall_s": wall,
        "generator_cpu": (own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime) / (wall * cores),
        "server_cpu": (_cpu_s(server_pid) - server0) / (wall * cores),
    }
    return tally, usage


def report(title: str, tally: Tally, usage: dict[str, float]) -> None:
    total = sum(len(v) for v in tally.latencies_ms.values())
    print(f"\n{title}: {total} requests in {usage['wall_s']:.1f} s = {total / usage['wall_s']:.0f} req/s; "
          f"CPU share of {os.cpu_count()} cores: load generator {usage['generator_cpu']:.0%}, "
          f"server {usage['server_cpu']:.0%}; load average (1 min) at the end: {os.getloadavg()[0]:.1f}")
    print(f"| endpoint | requests | req/s | p50 ms | p99 ms | errors |\n| --- | --- | --- | --- | --- | --- |")
    for kind, values in sorted(tally.latencies_ms.items()):
        print(f"| {kind} | {len(values)} | {len(values) / usage['wall_s']:.0f} | {_percentile(values, 0.5):.1f} | "
              f"{_percentile(values, 0.99):.1f} | {tally.errors.get(kind, 0)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of each run (bounded).")
    parser.add_argument("--max-requests", type=int, default=30000, help="Most requests of each run.")
    parser.add_argument("--jobs", type=int, default=120, help="Jobs stored before the runs (pages of 50 are full).")
    parser.add_argument("--keys", type=int, default=20, help="Distinct Idempotency-Keys the submissions share.")
    parser.add_argument("--broker", default="memory://")
    parser.add_argument("--database-url", default="", help="Default: SQLite in a temporary data dir.")
    parser.add_argument("--token", action="store_true",
                        help="Require tokens (AUTOML_AUTH_MODE=always): every request presents one (admin scope), "
                             "is looked up and audited.")
    args = parser.parse_args()

    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-api-load-"))
    env = {**os.environ, "AUTOML_DATA_DIR": str(data_dir), "AUTOML_PORT": str(port), "AUTOML_BROKER_URL": args.broker,
           "AUTOML_RESULT_BACKEND": "cache+memory://", "AUTOML_DATABASE_URL": args.database_url,
           "AUTOML_AUTH_MODE": "always" if args.token else "auto"}
    server = subprocess.Popen([sys.executable, "-m", "automl_server.cli", "serve", "--no-worker", "--no-agent"],
                              env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(600):
            try:
                if _request(conn, "GET", "/api/v1/health")[0] == 200:
                    break
            except OSError:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            time.sleep(0.2)
        if args.token:
            sys.path.insert(0, str(ROOT))
            from automl_server.auth import create_token
            from automl_server.db.engine import get_database

            with get_database(args.database_url or f"sqlite:///{data_dir / 'automl.sqlite'}").session() as session:
                AUTH["Authorization"] = f"Bearer {create_token(session, 'bench', ['admin']).secret}"
        _request(conn, "POST", "/api/v1/devices",
                 {"name": "local-cpu", "kind": "cpu", "runtimes": [{"name": "onnxruntime"}]})
        job_ids = []
        for _ in range(args.jobs):
            status, payload = _request(conn, "POST", "/api/v1/jobs", JOB)
            assert status == 202, payload
            job_ids.append(json.loads(payload)["id"])
        print(f"server: automl serve --no-worker --no-agent on 127.0.0.1:{port}, {args.jobs} jobs stored, "
              f"broker {args.broker}, database {args.database_url or 'SQLite'}, "
              f"{'tokens required (each request with one, audited)' if args.token else 'local mode (no token)'}; "
              f"{args.clients} clients, "
              f"{args.seconds:.0f} s or {args.max_requests} requests per run; "
              f"load average before: {os.getloadavg()[0]:.1f}")

        tally, usage = run(port, server.pid, ["list"], args.clients, args.seconds, args.max_requests, job_ids, [])
        report("GET /jobs (page of 50) alone", tally, usage)
        values = tally.latencies_ms["list"]
        rate, p99 = len(values) / usage["wall_s"], _percentile(values, 0.99)
        met = rate >= 500 and p99 <= 250 and not tally.errors
        print(f"goal >= 500 req/s, p99 <= 250 ms, no error: {'met' if met else 'NOT met'} "
              f"({rate:.0f} req/s, p99 {p99:.0f} ms, {sum(tally.errors.values())} errors)")

        run_id = f"{time.time_ns():x}"
        keys = [f"bench-{run_id}-{i}" for i in range(args.keys)]
        plan = ["list"] * 4 + ["detail"] * 3 + ["events"] * 2 + ["devices"] + ["submit"]
        tally, usage = run(port, server.pid, plan, args.clients, args.seconds, args.max_requests, job_ids, keys)
        report("mix: list 4, detail 3, events 2, devices 1, submit 1 (with Idempotency-Key)", tally, usage)
        jobs_by_key: dict[str, set[str]] = defaultdict(set)
        for key, _status, job_id in tally.submissions:
            jobs_by_key[key].add(job_id)
        created = sum(1 for _key, status, _id in tally.submissions if status == 202)
        one_each = all(len(ids) == 1 for ids in jobs_by_key.values()) and created == len(jobs_by_key)
        print(f"idempotency: {len(tally.submissions)} accepted submissions with {len(jobs_by_key)} keys -> "
              f"{sum(len(ids) for ids in jobs_by_key.values())} jobs, {created} answered 202 (new), the rest 200 "
              f"(replayed): {'one job per key' if one_each else 'DUPLICATE JOBS'}")
    finally:
        server.terminate()
        _out, err = server.communicate(timeout=30)
        summaries = [line for line in err.splitlines() if "server threads were busy" in line]
        per_request = [line for line in err.splitlines() if "Task queue depth" in line]
        print(f"server log: {len(summaries)} queue summaries, {len(per_request)} per-request queue lines")
        for line in summaries[-3:]:
            print("  " + line.strip())


if __name__ == "__main__":
    main()
