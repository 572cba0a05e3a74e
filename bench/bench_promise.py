"""Does a job keep its latency promise? Push-button jobs at targets spread over
the achievable range (issue 18, part 4).

One ``automl serve`` on embedded defaults (SQLite, the embedded worker, the
local CPU agent with its cores lock), as a user runs it. For each dataset, a
profile-only job reads the space's achievable range on this CPU; then one job
per target fraction (``--fracs``, 0 = the fastest network, 1 = the slowest) is
submitted over the REST API and followed to the end, one after the other (the
second job on a dataset reuses the first's latency table and calibration
networks, as a user's second job does). Accuracy is not the point here, so the
budget is small (``--budget``) and IOS scheduling is off.

Prints, per job: the target, the prediction with its interval (the predictor's
held-out error), the measured latency of the exported file, measured /
predicted, whether it is within 10% and under the target, and how many
networks the job tried (a retry follows a miss, jobs/promise.py).

    .venv/bin/python bench/bench_promise.py --datasets digits,mnist-5k --fracs 0.2,0.35,0.5,0.65,0.8

The goal (issue 18): ten of ten jobs measured under their target and within
10% of their prediction.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_job import achievable_range, start_serve, submit, wait, wait_for_agent  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="digits,mnist-5k")
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--runtime", default="onnxruntime")
    parser.add_argument("--fracs", default="0.2,0.35,0.5,0.65,0.8")
    parser.add_argument("--budget", default='{"warmup_epochs": 2, "search_epochs": 6, "train_epochs": 3}',
                        help="JSON budget of every job")
    parser.add_argument("--timeout-s", type=float, default=3600)
    args = parser.parse_args()
    fracs = [float(f) for f in args.fracs.split(",")]
    budget = json.loads(args.budget)

    data_dir = Path(tempfile.mkdtemp(prefix="automl-bench-promise-"))
    server, url = start_serve(data_dir)
    rows: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = os.getloadavg()[0]
    try:
        wait_for_agent(url, data_dir)
        for dataset in args.datasets.split(","):
            base = {"dataset": dataset, "device": "local-cpu", "runtime": args.runtime, "space": args.space,
                    "budget": budget, "tune": False, "params": {"schedule": False}}
            low, high = achievable_range(url, base, args.timeout_s)
            print(f"{dataset}: achievable {low:.4g}-{high:.4g} ms on local-cpu ({args.runtime})", flush=True)
            for frac in fracs:
                target = round(low + frac * (high - low), 6)
                job = wait(url, submit(url, {**base, "latency_target_ms": target}), args.timeout_s)
                rows.append(row(dataset, frac, target, job))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"\n{started}, {args.space} / {args.runtime} / local-cpu, budget {json.dumps(budget)}, tune off, "
          f"schedule off; load average (1 min) {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print("| dataset | target at | target ms | predicted ms (interval) | measured ms | measured / predicted | "
          "within 10% | under target | networks tried | job |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        interval = "-" if r["interval"] is None else f"{r['interval'][0]:.4g}-{r['interval'][1]:.4g}"
        print(f"| {r['dataset']} | {r['frac']:.2f} | {r['target_ms']:.4g} | {fmt(r['predicted_ms'])} ({interval}) | "
              f"{fmt(r['measured_ms'])} | {fmt(r['ratio'], 3)} | {yes(r['within_10pct'])} | {yes(r['target_met'])} | "
              f"{r['tries']} | {r['state']} |")
    kept = sum(bool(r["target_met"]) and bool(r["within_10pct"]) for r in rows)
    print(f"\n{kept} of {len(rows)} jobs measured under their target and within 10% of their prediction")


def row(dataset: str, frac: float, target: float, job: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"dataset": dataset, "frac": frac, "target_ms": target, "job": job["id"],
                           "state": job["state"], "predicted_ms": None, "interval": None, "measured_ms": None,
                           "ratio": None, "within_10pct": None, "target_met": None, "tries": 0}
    report = (job.get("result") or {}).get("report")
    if report is None:
        out["error"] = job.get("error")
        return out
    lat = report["latency"]
    out.update(predicted_ms=lat["predicted_ms"], interval=lat.get("predicted_interval_ms"),
               measured_ms=lat["measured_ms"], ratio=lat["measured_over_predicted"],
               within_10pct=lat["within_10pct"], target_met=report["target_met"],
               tries=max(1, len(lat.get("tries") or [])), missed=report.get("target_missed"),
               margin=(lat.get("target_margin") or {}).get("margin"))
    return out


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "**no**")


if __name__ == "__main__":
    main()
