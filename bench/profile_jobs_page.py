"""Where one `GET /api/v1/jobs?page_size=50` spends its time, with an API token
(auth_mode "always": the token lookup and the audit row included), in-process
through Flask's test client on SQLite: cProfile over N requests, top functions
by cumulative time, and the mean time per request.

    .venv/bin/python bench/profile_jobs_page.py --requests 300
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from automl_server.app import create_app  # noqa: E402
from automl_server.auth import create_token  # noqa: E402
from automl_server.celery_app import make_celery  # noqa: E402
from automl_server.db.engine import get_database  # noqa: E402
from automl_server.datasets.store import register_bundled_datasets  # noqa: E402
from automl_server.db.migrate import upgrade  # noqa: E402
from automl_server.settings import settings_from_env  # noqa: E402

JOB = {"dataset": "digits", "device": "local-cpu", "latency_target_ms": 5.0, "space": "tiny"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--local", action="store_true", help="Local mode: no token (auth_mode never).")
    parser.add_argument("--sort", default="cumulative", help="pstats order: cumulative or tottime")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="profile-jobs-page-"))
    settings = settings_from_env({}, data_dir=data_dir, auth_mode="never" if "--local" in sys.argv else "always", broker_url="memory://",
                                 result_backend="cache+memory://")
    upgrade(get_database(settings.resolved_database_url))
    app = create_app(settings, celery=make_celery(settings))
    with get_database(settings.resolved_database_url).session() as session:
        register_bundled_datasets(session, settings)
        secret = create_token(session, "bench", ["admin"]).secret
    client = app.test_client()
    auth = {"Authorization": f"Bearer {secret}"}
    assert client.post("/api/v1/devices", headers=auth, json={
        "name": "local-cpu", "kind": "cpu", "runtimes": [{"name": "onnxruntime"}]}).status_code in (200, 201)
    for _ in range(args.jobs):
        submitted = client.post("/api/v1/jobs", headers=auth, json=JOB)
        assert submitted.status_code == 202, submitted.json
    for _ in range(20):  # warm up
        client.get("/api/v1/jobs?page_size=50", headers=auth)

    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for _ in range(args.requests):
        response = client.get("/api/v1/jobs?page_size=50", headers=auth)
        assert response.status_code == 200 and len(response.get_json()["jobs"]) == 50
    profiler.disable()
    elapsed = time.perf_counter() - started
    print(f"{args.requests} requests: {elapsed / args.requests * 1000:.2f} ms each under the profiler")
    pstats.Stats(profiler).sort_stats(*sys.argv[sys.argv.index("--sort") + 1:sys.argv.index("--sort") + 2] if "--sort" in sys.argv else ["cumulative"]).print_stats(args.top)

    started = time.perf_counter()
    for _ in range(args.requests):
        client.get("/api/v1/jobs?page_size=50", headers=auth)
    print(f"without the profiler: {(time.perf_counter() - started) / args.requests * 1000:.2f} ms per request")


if __name__ == "__main__":
    main()
