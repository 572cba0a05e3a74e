"""Does the search earn its keep on the product's own path? Push-button jobs with
``params.baselines: true`` over a grid of datasets, spaces, targets, seeds and
strategies (issue 17, part 2 and its goal).

One ``automl serve`` on embedded defaults (SQLite, the embedded worker, the
local CPU agent with its cores lock), as a user runs it. For each dataset and
space, a profile-only job reads the achievable range of the space on this CPU
(the job's runtime, its profiled and calibrated latency table); then one job
per target fraction (``--fracs``: 0 = the fastest network, 1 = the slowest),
seed and strategy, each with the baselines stage: random search within the
same predicted bound for the search's own cost, and the uniform
MobileNetV2-style network, every final network trained with the job's train
budget, tested on the job's test split (no search saw it) and measured on the
device by its agent (``jobs/baselines.py``). Jobs run one after another.

Prints one line per job and method as it ends, then one table row per
(dataset, space, target, strategy, method): mean (min-max) over the seeds of
test accuracy, measured latency and search cost; and, per row, whether the
searched network is at least as accurate as the better baseline within the
seeds' spread (its mean at least the baseline's mean, or the baseline's mean
inside the searched network's min-max), the difference paired by job (the
searched network's accuracy minus the better baseline's of the same job: one
seed moves all three together), and whether every job's measured latency was
within its target and at least 85% of it.

    .venv/bin/python bench/bench_baselines_jobs.py --datasets digits,mnist-5k --spaces tiny \\
        --fracs 0.3,0.6 --seeds 0,1,2 --strategies gradient --save runs/baselines-jobs.jsonl

``--save FILE`` appends every finished job's rows as one JSON line, and
``--analyse FILE`` prints the table from such a file (several runs may append
to one file, e.g. a second strategy later).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_job import achievable_range, start_serve, submit, wait, wait_for_agent  # noqa: E402

from automl_server.jobs.margin import BUDGET_USED  # noqa: E402  (the issue's bar, the one the fit holds tries to)

METHODS = ("searched", "random", "uniform")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="digits,mnist-5k")
    parser.add_argument("--spaces", default="tiny")
    parser.add_argument("--runtime", default="onnxruntime")
    parser.add_argument("--fracs", default="0.3,0.6")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--strategies", default="gradient", help="gradient and/or rl")
    parser.add_argument("--warmup-sampling", default="uniform", choices=("uniform", "progressive"))
    parser.add_argument("--budget", default='{"warmup_epochs": 4, "search_epochs": 10, "train_epochs": 10}',
                        help="JSON budget of every job")
    parser.add_argument("--params", default="{}",
                        help="JSON job params added to every job (e.g. '{\"fit_on_device\": false}'); "
                             "rows with other params are tabled apart")
    parser.add_argument("--timeout-s", type=float, default=5400)
    parser.add_argument("--save", type=Path, help="append each job's rows to this JSON-lines file")
    parser.add_argument("--analyse", type=Path, help="only print the table from a saved JSON-lines file")
    args = parser.parse_args()
    if args.analyse is not None:
        table([json.loads(line) for line in args.analyse.read_text().splitlines() if line.strip()])
        return
    fracs = [float(f) for f in args.fracs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    budget = json.loads(args.budget)
    extra = json.loads(args.params)

    data_dir = Path(tempfile.mkdtemp(prefix="automl-bench-baselines-"))
    server, url = start_serve(data_dir)
    jobs: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        wait_for_agent(url, data_dir)
        for dataset in args.datasets.split(","):
            for space in args.spaces.split(","):
                base = {"dataset": dataset, "device": "local-cpu", "runtime": args.runtime, "space": space,
                        "budget": budget, "tune": False}
                low, high = achievable_range(url, base, args.timeout_s, quiet=True)
                print(f"{dataset} / {space}: achievable {low:.4g}-{high:.4g} ms on local-cpu ({args.runtime})",
                      flush=True)
                for frac in fracs:
                    target = round(low + frac * (high - low), 6)
                    for strategy in args.strategies.split(","):
                        for seed in seeds:
                            params = {"schedule": False, "baselines": True, "seed": seed,
                                      "warmup_sampling": args.warmup_sampling, **extra}
                            body = {**base, "strategy": strategy, "latency_target_ms": target, "params": params}
                            began = time.monotonic()
                            job = wait(url, submit(url, body), args.timeout_s, quiet=True)
                            record = job_record(dataset, space, frac, target, strategy, seed,
                                                args.warmup_sampling, job, time.monotonic() - began)
                            record["params"] = extra
                            jobs.append(record)
                            for line in describe(record):
                                print(line, flush=True)
                            if args.save is not None:
                                args.save.parent.mkdir(parents=True, exist_ok=True)
                                with args.save.open("a") as out:
                                    out.write(json.dumps(record) + "\n")
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"\n{started}, local-cpu / {args.runtime}, budget {json.dumps(budget)}, params {json.dumps(extra)}, "
          f"tune off, IOS off, warm-up sampling {args.warmup_sampling}; "
          f"load average (1 min) {os.getloadavg()[0]:.2f} at the end")
    table(jobs)


def job_record(dataset: str, space: str, frac: float, target: float, strategy: str, seed: int,
               warmup_sampling: str, job: dict[str, Any], seconds: float) -> dict[str, Any]:
    """What one job showed: its state and, per method, test accuracy, measured ms and search cost."""
    result = job.get("result") or {}
    compared = result.get("baselines") or (result.get("report") or {}).get("baselines") or {}
    rows: dict[str, dict[str, Any]] = {}
    for row in compared.get("rows") or []:
        rows[row["method"]] = {k: row.get(k) for k in ("label", "test_accuracy", "measured_ms", "predicted_ms",
                                                         "search_cost_s", "skipped", "measurement_error")}
        fitted = row.get("fitted") or (result.get("fit") if row["method"] == "searched" else None) or {}
        # The fit stage (jobs/fit.py): the untrained networks measured, as fractions of the target.
        rows[row["method"]]["fit_measured"] = [round(t["measured_ms"] / target, 3) for t in fitted.get("tries", ())]
    return {"dataset": dataset, "space": space, "frac": frac, "target_ms": target, "strategy": strategy,
            "seed": seed, "warmup_sampling": warmup_sampling, "job": job["id"], "state": job["state"], "error": job.get("error"),
            "seconds": round(seconds, 1), "rows": rows}


def describe(record: dict[str, Any]) -> list[str]:
    head = (f"{record['dataset']} / {record['space']} target {record['target_ms']:.4g} ms ({record['frac']:.0%}) "
            f"{record['strategy']} seed {record['seed']}: job {record['state']} in {record['seconds']:.0f} s")
    if not record["rows"]:
        return [f"{head}; no baselines ({record['error']})"]
    lines = [head]
    for method in METHODS:
        row = record["rows"].get(method)
        if row is None or row.get("skipped"):
            lines.append(f"  {method:9s} skipped: {None if row is None else row['skipped']}")
            continue
        lines.append(f"  {method:9s} {row['label']}: test accuracy {row['test_accuracy']:.3f}, predicted "
                     f"{row['predicted_ms']:.4g} ms, measured {fmt(row.get('measured_ms'))} ms, search cost "
                     f"{row['search_cost_s']:.0f} s"
                     + (f"; fit tries at {row['fit_measured']} of the target" if row.get("fit_measured") else ""))
    return lines


def table(jobs: list[dict[str, Any]]) -> None:
    groups: dict[tuple[str, str, float, str], list[dict[str, Any]]] = {}
    for record in jobs:
        strategy = record["strategy"]
        if record.get("warmup_sampling", "uniform") != "uniform":
            strategy += f", {record['warmup_sampling']} warm-up"
        if record.get("params"):
            strategy += ", " + ", ".join(f"{k}={v}" for k, v in sorted(record["params"].items()))
        key = (record["dataset"], record["space"], record["frac"], strategy)
        groups.setdefault(key, []).append(record)
    print("| dataset | space | target (of range) | strategy | method | test accuracy | measured ms | "
          "measured / target | search cost s | seeds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    verdicts: list[str] = []
    for (dataset, space, frac, strategy), records in groups.items():
        target = statistics.fmean(r["target_ms"] for r in records)
        accuracy: dict[str, list[float]] = {}
        for method in METHODS:
            pairs = [(r["target_ms"], r["rows"][method]) for r in records
                     if method in r["rows"] and not r["rows"][method].get("skipped")]
            rows = [row for _, row in pairs]
            if not rows:
                continue
            acc = [float(r["test_accuracy"]) for r in rows]
            ms = [float(r["measured_ms"]) for r in rows if r.get("measured_ms") is not None]
            ratio = [float(row["measured_ms"]) / t for t, row in pairs if row.get("measured_ms") is not None]
            accuracy[method] = acc
            print(f"| {dataset} | {space} | {target:.4g} ms ({frac:.0%}) | {strategy} | {rows[0]['label'].split(' (')[0]} | "
                  f"{spread(acc, '.3f')} | {spread(ms, '.4g')} | {spread(ratio, '.2f')} | "
                  f"{spread([float(r['search_cost_s']) for r in rows], '.0f')} | {len(rows)} |")
        failed = [r for r in records if r["state"] != "succeeded"]
        verdicts.append(verdict(f"{dataset} / {space} / {frac:.0%} / {strategy}", accuracy, records, failed))
    print()
    for line in verdicts:
        print(line)


def verdict(name: str, accuracy: dict[str, list[float]], records: list[dict[str, Any]],
            failed: list[dict[str, Any]]) -> str:
    """Searched at least as accurate as the better baseline within the seeds' spread; budget used."""
    searched = accuracy.get("searched")
    others = {m: statistics.fmean(v) for m, v in accuracy.items() if m != "searched" and v}
    if not searched or not others:
        return f"{name}: not comparable ({len(failed)} job(s) failed)"
    best_method, best = max(others.items(), key=lambda kv: kv[1])
    mean = statistics.fmean(searched)
    level = mean >= best or min(searched) <= best <= max(searched)
    ratios = [r["rows"]["searched"]["measured_ms"] / r["target_ms"] for r in records
              if "searched" in r["rows"] and r["rows"]["searched"].get("measured_ms") is not None]
    used = bool(ratios) and all(BUDGET_USED <= x <= 1.0 for x in ratios)
    # A baseline measured over the target was compared at more latency than the searched network may use.
    over = {m: sum(1 for r in records if (r["rows"].get(m) or {}).get("measured_ms") is not None
                   and r["rows"][m]["measured_ms"] > r["target_ms"]) for m in METHODS if m != "searched"}
    # Paired by job: one seed gives the three networks one split and one initialisation stream,
    # and moves all three together (up to 6 points on digits); the difference removes that.
    paired = []
    for r in records:
        baselines = [row["test_accuracy"] for m, row in r["rows"].items() if m != "searched" and not row.get("skipped")]
        if "searched" in r["rows"] and baselines:
            paired.append(r["rows"]["searched"]["test_accuracy"] - max(baselines))
    # The standard error of the paired mean says whether a difference is more than the seeds' noise.
    error = statistics.stdev(paired) / len(paired) ** 0.5 if len(paired) > 1 else float("nan")
    paired_text = (f"; paired by job, searched - the job's better baseline {100 * statistics.fmean(paired):+.1f} "
                   f"points (s.e. {100 * error:.1f}; {100 * min(paired):+.1f} to {100 * max(paired):+.1f}), "
                   f"ahead or level on {sum(1 for d in paired if d >= 0)} of {len(paired)}") if paired else ""
    # A comparison at equal latency: each baseline's share of the target beside the searched one's.
    spent = {m: [r["rows"][m]["measured_ms"] / r["target_ms"] for r in records
                 if (r["rows"].get(m) or {}).get("measured_ms") is not None] for m in METHODS if m != "searched"}
    spent_text = "".join(f"; {m} measured / target {min(v):.2f}-{max(v):.2f}" for m, v in spent.items() if v)
    return (f"{name}: searched {mean:.3f} vs best baseline {best_method} {best:.3f}: "
            f"{'at least as accurate within the spread' if level else '**less accurate**'}; measured / target "
            f"{min(ratios, default=float('nan')):.2f}-{max(ratios, default=float('nan')):.2f} "
            f"({'within the target and >= 85% of it' if used else '**outside [0.85, 1.0]**'})"
            + paired_text + spent_text
            + "".join(f"; {m} over its target in {n} of {len(records)}" for m, n in over.items() if n)
            + (f"; {len(failed)} job(s) not succeeded" if failed else ""))


def spread(values: list[float], spec: str) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:{spec}}"
    return f"{statistics.fmean(values):{spec}} ({min(values):{spec}}-{max(values):{spec}})"


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


if __name__ == "__main__":
    main()
