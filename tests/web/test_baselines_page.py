"""The job page of a job that ran with ``params.baselines``: the
accuracy-vs-measured-latency chart with the searched network and the
baselines and the target line, and their table (a real Chromium on the page
served by the app; the job's result written directly: tests/server/test_baselines_job.py
runs such a job for real)."""
from __future__ import annotations

import threading
from typing import Any

from automl_server.db.models import Job, JobState
from tests.web.test_browser import serious_axe_violations

PLAN = ["validate", "profile", "search", "tune", "fit", "train", "export", "verify", "baselines", "report"]


def baselines_result(target_ms: float) -> dict[str, Any]:
    arch = {"space": "tiny", "resolution": 8, "num_classes": 10, "in_channels": 1, "blocks": ["mb3_k3"] * 8}
    rows = [
        {"method": "searched", "label": "searched (gradient)", "arch": arch, "predicted_ms": 0.09, "measured_ms": 0.095,
         "test_accuracy": 0.91, "search_cost_s": 12.0, "train_seconds": 30.0},
        {"method": "random", "label": "random search (N=4)", "arch": arch, "predicted_ms": 0.08, "measured_ms": 0.083,
         "test_accuracy": 0.88, "search_cost_s": 11.5, "train_seconds": 29.0, "networks": 4},
        {"method": "uniform", "label": "uniform mb3_k5 (1 cell skipped)", "arch": arch, "predicted_ms": 0.092,
         "measured_ms": 0.097, "test_accuracy": 0.89, "search_cost_s": 0.0, "train_seconds": 31.0,
         # Its first network measured over the target and was replaced (jobs/baselines._retry_misses).
         "tries": [{"arch": arch, "predicted_ms": 0.0925, "measured_ms": 0.104, "test_accuracy": 0.9}]},
    ]
    return {"target_ms": target_ms, "predicted_at_most_ms": 0.0925, "rows": rows,
            "train_budget": {"epochs": 150, "minutes": None, "pipeline": "standard"}, "device_seconds": 3.0}


def test_the_job_page_draws_the_searched_network_against_the_baselines_and_the_target(browser, artifacts_dir, tmp_path):
    from werkzeug.serving import make_server

    from automl_server.app import create_app
    from automl_server.celery_app import make_celery
    from automl_server.db.engine import get_database
    from automl_server.db.migrate import upgrade
    from tests.conftest import _forget_database, make_settings

    url = f"sqlite:///{tmp_path / 'page.db'}"
    upgrade(get_database(url))
    settings = make_settings(tmp_path, url)
    app = create_app(settings, celery=make_celery(settings))
    with app.extensions["automl"].db.session() as session:
        job = Job(state=JobState.SUCCEEDED.value, dataset_name="digits", device_name="local-cpu", runtime="onnxruntime",
                  space="tiny", pipeline="standard", latency_target_ms=0.1, params={"baselines": True},
                  result={"plan": PLAN, "stages_done": PLAN[:-1], "baselines": baselines_result(0.1)})
        session.add(job)
        session.flush()
        job_id = job.id
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"http://127.0.0.1:{server.server_port}/jobs/{job_id}")
        page.locator("#chart-baselines circle").first.wait_for()

        assert page.locator("#baselines-card").is_visible()
        assert page.locator("#chart-baselines circle").count() == 3
        assert page.locator("#chart-baselines [data-marker=target]").count() == 1
        legend = page.locator("#chart-baselines .legend").inner_text()
        assert "searched (gradient)" in legend and "random search (N=4)" in legend and "uniform mb3_k5" in legend
        rows = page.locator("#baselines-rows tr")
        assert rows.count() == 3 and "91.0%" in rows.nth(0).inner_text()
        summary = page.locator("#baselines-summary").inner_text()
        assert "Replaced by a faster network after measuring over your target: uniform mb3_k5" in summary
        assert "0.104 ms" in summary
        assert not errors, errors
        assert not serious_axe_violations(page)
        page.locator("#baselines-card").screenshot(path=artifacts_dir / "job-baselines.png")
    finally:
        page.close()
        server.shutdown()
        thread.join(10)
        _forget_database(url)
