"""The web UI's pages and endpoints through Flask's test client: login in
non-local mode, the session accepted by the API (with its CSRF token), the
sample grid, the achievable latency range, and paging of the jobs table.
The whole flow in a real browser is in test_browser.py."""
from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from automl_server.app import create_app
from automl_server.auth import create_token
from automl_server.celery_app import make_celery
from automl_server.db.models import Job
from tests.conftest import make_settings
from tests.datasets.archives import good_zip


@pytest.fixture
def locked_app(tmp_path, database_url):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, database_url, auth_mode="always")
    return create_app(settings, celery=make_celery(settings, eager=True))


def _token(app) -> str:  # type: ignore[no-untyped-def]
    with app.extensions["automl"].db.session() as session:
        return create_token(session, "web-test", ["read", "submit", "admin"]).secret


def _csrf(page_html: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', page_html).group(1)  # type: ignore[union-attr]


def test_pages_ask_for_a_token_and_the_session_then_opens_pages_and_api(locked_app):
    client = locked_app.test_client()
    secret = _token(locked_app)

    to_login = client.get("/datasets")
    refused = client.post("/login", data={"token": "aml_wrong", "next": "/datasets"})
    accepted = client.post("/login", data={"token": secret, "next": "/datasets"})
    page = client.get("/datasets")
    api_read = client.get("/api/v1/jobs")

    assert to_login.status_code == 302 and "/login?next=/datasets" in to_login.location
    assert refused.status_code == 401 and "not accepted" in refused.get_data(as_text=True)
    assert accepted.status_code == 302 and accepted.location.endswith("/datasets")
    cookie = accepted.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert page.status_code == 200 and "Upload images" in page.get_data(as_text=True)
    assert api_read.status_code == 200


def test_api_writes_from_the_session_need_the_pages_csrf_token(locked_app):
    client = locked_app.test_client()
    client.post("/login", data={"token": _token(locked_app)})
    csrf = _csrf(client.get("/").get_data(as_text=True))

    forged = client.post("/api/v1/jobs/nope/cancel")
    genuine = client.post("/api/v1/jobs/nope/cancel", headers={"X-CSRF-Token": csrf})

    assert forged.status_code == 403 and forged.json["field"] == "X-CSRF-Token"
    assert genuine.status_code == 404  # past authentication: the job does not exist


def test_logout_and_a_revoked_token_end_the_session(locked_app):
    from automl_server.db.models import ApiToken, utcnow

    client = locked_app.test_client()
    client.post("/login", data={"token": _token(locked_app)})
    csrf = _csrf(client.get("/").get_data(as_text=True))
    with locked_app.extensions["automl"].db.session() as session:
        for row in session.query(ApiToken):
            row.revoked_at = utcnow()

    revoked_page = client.get("/devices")
    revoked_api = client.get("/api/v1/devices")
    client.post("/logout", data={"csrf": csrf})

    assert revoked_page.status_code == 302 and "/login" in revoked_page.location
    assert revoked_api.status_code == 401
    assert client.get("/api/v1/devices").status_code == 401


def test_session_cookie_is_secure_over_https_and_login_never_redirects_off_site(locked_app):
    client = locked_app.test_client()
    secret = _token(locked_app)

    over_https = client.post("/login", data={"token": secret, "next": "//evil.example/x"},
                             headers={"X-Forwarded-Proto": "https"})

    assert "Secure" in over_https.headers["Set-Cookie"]
    assert over_https.location == "/"


def test_the_pages_need_a_token_that_may_read_and_the_session_keeps_its_scopes(locked_app):
    client = locked_app.test_client()
    with locked_app.extensions["automl"].db.session() as session:
        agent = create_token(session, "pi-agent", ["agent:pi"]).secret
        reader = create_token(session, "dashboard", ["read"]).secret

    agent_login = client.post("/login", data={"token": agent})
    client.post("/login", data={"token": reader})
    csrf = _csrf(client.get("/").get_data(as_text=True))
    retire = client.delete("/api/v1/devices/pi", headers={"X-CSRF-Token": csrf})

    assert agent_login.status_code == 401 and "the read scope" in agent_login.get_data(as_text=True)
    assert retire.status_code == 403 and retire.json["scope_needed"] == "admin"


def test_local_mode_needs_no_login(client):
    assert client.get("/devices").status_code == 200
    assert client.get("/login").status_code == 200


def _upload(client, tmp_path) -> dict:  # type: ignore[no-untyped-def]
    path = good_zip(tmp_path, classes=("cat", "dog", "owl"), per_class=5, size=(8, 8))
    with path.open("rb") as handle:
        answer = client.post("/api/v1/datasets", data={"file": (handle, "pets.zip")})
    assert answer.status_code == 201, answer.json
    return answer.json


def test_sample_grid_is_a_png_with_a_row_per_class(client, tmp_path):
    dataset = _upload(client, tmp_path)

    grid = client.get(f"/api/v1/datasets/{dataset['name']}/samples.png?per_class=2")
    again = client.get(f"/api/v1/datasets/{dataset['id']}/samples.png?per_class=2")
    bad = client.get(f"/api/v1/datasets/{dataset['id']}/samples.png?per_class=0")
    missing = client.get("/api/v1/datasets/nothing/samples.png")

    image = Image.open(io.BytesIO(grid.data))
    assert grid.status_code == 200 and grid.mimetype == "image/png"
    # 8x8 images are drawn at 48 px: three rows of 48 px plus gaps, two columns after the labels.
    assert image.height == 3 * (48 + 4) + 4 and image.width == 110 + 2 * (48 + 4)
    assert again.data == grid.data
    assert bad.status_code == 422 and bad.json["field"] == "per_class"
    assert missing.status_code == 404
    for response in (grid, again):
        response.close()


def test_datasets_page_shows_histogram_size_and_samples(client, tmp_path):
    dataset = _upload(client, tmp_path)

    page = client.get("/datasets").get_data(as_text=True)

    assert f"/api/v1/datasets/{dataset['id']}/samples.png" in page
    assert "Images per class: cat 5, dog 5, owl 5" in page
    assert "8×8 px" in page


def test_achievable_range_says_when_the_device_is_not_profiled_yet(client, tmp_path):
    _upload(client, tmp_path)
    client.post("/api/v1/devices", json={"name": "pi", "kind": "raspberry-pi", "runtimes": [{"name": "onnxruntime"}]})

    fresh = client.get("/api/v1/devices/pi/achievable-range?dataset=pets&space=tiny")
    unknown = client.get("/api/v1/devices/nope/achievable-range?dataset=pets&space=tiny")
    wrong_runtime = client.get("/api/v1/devices/pi/achievable-range?dataset=pets&space=tiny&runtime=litert")

    assert fresh.status_code == 200
    assert fresh.json["profiled"] is False and fresh.json["fastest_ms"] is None
    assert fresh.json["message"].startswith("not profiled yet: the job will profile it first")
    assert fresh.json["ops_measured"] == 0 and fresh.json["input_shape"] == [8, 8, 3]
    assert unknown.status_code == 404
    assert wrong_runtime.status_code == 422 and wrong_runtime.json["field"] == "runtime"


def test_achievable_range_comes_from_the_latency_table_once_complete(client, app, tmp_path):
    from automl_server.profiling import repository, resolve_target
    from latency_db import MeasurementStats
    from search_spaces import get_space, space_keys

    _upload(client, tmp_path)
    client.post("/api/v1/devices", json={"name": "pi", "kind": "raspberry-pi",
                                         "runtimes": [{"name": "onnxruntime", "version": "1.0"}]})
    db = app.extensions["automl"].db
    repo = repository(db)
    record = repo.target(resolve_target(db, "pi").spec)
    keys = space_keys(get_space("tiny").layout(8, 3, 3))
    for i, key in enumerate(keys):  # every op 0.01 ms, the later ones slower
        ms = 0.01 * (1 + i % 4)
        repo.record(record, key, MeasurementStats(3, 1, ms, ms, 0.0, ms, ms, 0.0), "test")

    answer = client.get("/api/v1/devices/pi/achievable-range?dataset=pets&space=tiny").json

    assert answer["profiled"] is True and answer["ops_measured"] == answer["ops_total"] == len(keys)
    assert 0 < answer["fastest_ms"] < answer["slowest_ms"]
    assert "run in" in answer["message"]


def test_the_pages_range_is_the_one_a_profile_only_job_records(client, app, tmp_path):
    """New search's range (the API) and a job's recorded range come from one
    function on the same table: equal, calibration included. A profile-only
    job ("Measure it") with a target below the range still succeeds."""
    from automl_server.engine.latency import arch_latency_ms
    from automl_server.profiling import predictor, repository, resolve_target
    from latency_db import MeasurementStats
    from search_spaces import arch_keys, get_space, sample_archs, space_keys

    _upload(client, tmp_path)
    client.post("/api/v1/devices", json={"name": "pi", "kind": "raspberry-pi",
                                         "runtimes": [{"name": "onnxruntime", "version": "1.0"}]})
    db = app.extensions["automl"].db
    repo = repository(db)
    target = resolve_target(db, "pi")
    record = repo.target(target.spec)
    for i, key in enumerate(space_keys(get_space("tiny").layout(8, 3, 3))):
        ms = 0.01 * (1 + i % 4)
        repo.record(record, key, MeasurementStats(3, 1, ms, ms, 0.0, ms, ms, 0.0), "test")
    plain = predictor(db, target, calibrated=False)
    for i, arch in enumerate(sample_archs("tiny", 6, 1, 8, 3, 3)):  # whole networks: 30% slower plus 0.02 ms
        lut = arch_latency_ms(arch, plain)
        repo.record_network(record, arch.to_dict(), lut * 1.3 + 0.02 + 0.001 * i, lut, "test",
                            n_ops=len(arch_keys(arch)))

    shown = client.get("/api/v1/devices/pi/achievable-range?dataset=pets&space=tiny").json
    job = client.post("/api/v1/jobs", json={"dataset": "pets", "device": "pi", "space": "tiny",
                                            "latency_target_ms": 0.0001, "stop_after": "profile",
                                            "params": {"calibration_networks": 5}}).json
    done = client.get(f"/api/v1/jobs/{job['id']}").json

    assert shown["profiled"] is True and shown["calibrated"] is True
    assert done["state"] == "succeeded", done["error"]
    assert done["result"]["profile"]["achievable_ms"] == [shown["fastest_ms"], shown["slowest_ms"]]

    # A job that names no target gets the middle of that range once profiled, like New search suggests.
    before = client.post("/api/v1/jobs", json={"dataset": "pets", "device": "pi", "space": "tiny",
                                               "stop_after": "profile", "params": {"calibration_networks": 5}}).json
    untargeted = client.get(f"/api/v1/jobs/{before['id']}").json
    middle = round((shown["fastest_ms"] + shown["slowest_ms"]) / 2, 6)
    assert before["latency_target_ms"] is None  # the 202 answer: nothing chosen before the table is read
    assert untargeted["state"] == "succeeded", untargeted["error"]
    assert untargeted["latency_target_ms"] == middle
    assert untargeted["result"]["profile"]["target_source"] == "range middle"
    page = client.get(f"/jobs/{before['id']}").get_data(as_text=True)
    assert f"{middle:.4g} ms" in page
    # Before its profile stage such a job has no target yet: the pages say so instead of failing.
    from automl_server.db.models import Job
    with db.session() as session:
        session.get_one(Job, before["id"]).latency_target_ms = None
    job_page, jobs_page = client.get(f"/jobs/{before['id']}"), client.get("/")
    assert job_page.status_code == jobs_page.status_code == 200
    assert "the middle of the achievable range (set once profiled)" in job_page.get_data(as_text=True)
    assert "mid-range" in jobs_page.get_data(as_text=True)


def test_duration_estimate_from_the_devices_recent_jobs(client, app, tmp_path):
    from datetime import timedelta

    from automl_server.db.models import utcnow

    _upload(client, tmp_path)  # 15 images
    client.post("/api/v1/devices", json={"name": "pi", "kind": "raspberry-pi", "runtimes": [{"name": "onnxruntime"}]})
    budget = {"warmup_epochs": 1, "search_epochs": 2, "tune_trials": 1, "tune_epochs": 1, "train_epochs": 6}
    url = "/api/v1/devices/pi/duration-estimate?dataset=pets&" + "&".join(f"{k}={v}" for k, v in budget.items())
    before = client.get(url).json
    db = app.extensions["automl"].db
    now = utcnow()
    with db.session() as session:
        for seconds, state, stop_after in ((100, "succeeded", None), (300, "succeeded", None), (200, "succeeded", None),
                                           (5, "succeeded", "profile"), (999, "failed", None)):
            session.add(Job(dataset_name="pets", device_name="pi", runtime="onnxruntime", space="tiny",
                            pipeline="standard", latency_target_ms=1.0, state=state,
                            params={"budget": budget, "tune": True, "stop_after": stop_after},
                            result={"validate": {"num_samples": 15}},
                            started_at=now - timedelta(seconds=seconds), finished_at=now))

    rl_before = client.get(url + "&strategy=rl").json
    with db.session() as session:  # an RL job and a job with baselines: slower per epoch, not mixed in
        for seconds, strategy, baselines in ((900, "rl", False), (1200, "gradient", True)):
            session.add(Job(dataset_name="pets", device_name="pi", runtime="onnxruntime", space="tiny",
                            pipeline="standard", latency_target_ms=1.0, state="succeeded",
                            params={"budget": budget, "tune": True, "strategy": strategy, "baselines": baselines},
                            result={"validate": {"num_samples": 15}},
                            started_at=now - timedelta(seconds=seconds), finished_at=now))

    after = client.get(url).json
    rl = client.get(url + "&strategy=rl").json
    with_baselines = client.get(url + "&baselines=true").json
    doubled = client.get(url.replace("train_epochs=6", "train_epochs=16")).json
    refused = client.get("/api/v1/devices/pi/duration-estimate?dataset=pets&train_epochs=0")

    assert before["seconds"] is None and before["message"] == "no recent jobs on pi to estimate from"
    # The median of 100, 300 and 200 s for the same budget; the profile-only and the failed job do not count.
    assert after["jobs_used"] == 3 and after["seconds"] == pytest.approx(200, rel=1e-3)
    assert after["message"] == "about 3 min, from 3 recent jobs on pi"
    # Each kind of job from its own kind only; none alike: no figure, and the message names the kind.
    assert rl_before["seconds"] is None
    assert rl_before["message"] == "no recent jobs like this one (rl search) on pi to estimate from"
    assert rl["jobs_used"] == 1 and rl["seconds"] == pytest.approx(900, rel=1e-3)
    assert rl["message"] == "about 15 min, from 1 recent job like this one (rl search) on pi"
    assert with_baselines["jobs_used"] == 1 and with_baselines["seconds"] == pytest.approx(1200, rel=1e-3)
    assert doubled["seconds"] == pytest.approx(400, rel=1e-3)  # 20 epochs instead of 10
    assert refused.status_code == 422 and refused.json["field"].endswith("train_epochs")


def test_jobs_table_pages_newest_first_and_filters(client, app, tmp_path):
    from datetime import timedelta

    from automl_server.db.models import utcnow

    db = app.extensions["automl"].db
    now = utcnow()
    with db.session() as session:
        for i in range(30):
            session.add(Job(dataset_name="digits", device_name="pi" if i % 2 else "phone", runtime="onnxruntime",
                            space="tiny", pipeline="standard", latency_target_ms=1.0 + i, params={},
                            state="succeeded" if i < 10 else "queued", created_at=now + timedelta(seconds=i)))

    first = client.get("/").get_data(as_text=True)
    older_link = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    second = client.get(older_link).get_data(as_text=True)
    filtered = client.get("/?state=succeeded&device=pi").get_data(as_text=True)
    expired = client.get("/?page_token=garbage").get_data(as_text=True)

    assert first.count("<tr data-job=") == 25 and "30 ms" in first
    assert second.count("<tr data-job=") == 5 and "1 ms" in second and 'rel="next"' not in second
    assert filtered.count("<tr data-job=") == 5
    assert "That page link has expired" in expired


def test_every_page_renders_with_labels_on_its_controls(client, tmp_path):
    _upload(client, tmp_path)
    client.post("/api/v1/devices", json={"name": "pi", "kind": "raspberry-pi", "runtimes": [{"name": "onnxruntime"}]})

    for path in ("/", "/datasets", "/devices", "/new", "/compare"):
        html = client.get(path).get_data(as_text=True)
        ids = set(re.findall(r'<(?:input|select)[^>]* id="([^"]+)"', html))
        labelled = set(re.findall(r'<label for="([^"]+)"', html))
        assert ids <= labelled, (path, ids - labelled)


def test_new_search_preselects_an_online_device_and_the_farm_offers_retiring(client, settings):
    from datetime import timedelta

    from sqlalchemy import update

    from automl_server.db.engine import get_database
    from automl_server.db.models import Device, utcnow

    for name in ("a-junk", "local-cpu"):  # the offline junk device sorts first
        client.post("/api/v1/devices", json={"name": name, "kind": "cpu", "runtimes": [{"name": "onnxruntime"}]})
    with get_database(settings.resolved_database_url).session() as session:
        session.execute(update(Device).where(Device.name == "a-junk")
                        .values(last_heartbeat_at=utcnow() - timedelta(hours=1)))

    new_page = client.get("/new").get_data(as_text=True)
    asked = client.get("/new?device=a-junk").get_data(as_text=True)
    farm = client.get("/devices").get_data(as_text=True)

    assert re.search(r'<option value="local-cpu"[^>]*selected', new_page)
    assert not re.search(r'<option value="a-junk"[^>]*selected', new_page)
    assert re.search(r'<option value="a-junk"[^>]*selected', asked)
    assert 'data-retire="a-junk"' in farm and 'id="confirm-retire"' in farm and "devices.js" in farm


def test_pages_send_security_headers_and_carry_no_inline_script(client, tmp_path):
    _upload(client, tmp_path)

    for path in ("/", "/datasets", "/devices", "/new", "/compare", "/login"):
        response = client.get(path)
        html = response.get_data(as_text=True)
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
        assert "unsafe-inline" not in policy, path
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
        # Every <script> either loads a file of this site or is a JSON data block (never executed).
        for attrs in re.findall(r"<script([^>]*)>", html):
            assert 'src="/static/' in attrs or 'type="application/json"' in attrs, (path, attrs)
        assert not re.search(r"\son[a-z]+=", html), path  # no inline event handlers
    assert client.get("/api/v1/jobs").headers["X-Content-Type-Options"] == "nosniff"
    docs = client.get("/api/v1/docs")
    assert "script-src 'self'" in docs.headers["Content-Security-Policy"]
    assert "<script>" not in docs.get_data(as_text=True)
    assert "SwaggerUIBundle(" in client.get("/api/v1/docs/automl-init.js").get_data(as_text=True)


def test_repeated_failed_logins_are_slowed(locked_app):
    from automl_server.login_throttle import failed_logins

    now = [1000.0]
    failed_logins(locked_app).clock = lambda: now[0]
    client = locked_app.test_client()
    secret = _token(locked_app)

    refused = [client.post("/login", data={"token": f"aml_guess{i}"}).status_code for i in range(5)]
    slowed_page = client.post("/login", data={"token": secret})
    slowed_api = client.get("/api/v1/jobs", headers={"Authorization": "Bearer aml_guess"})
    now[0] += 2
    after_the_wait = client.post("/login", data={"token": secret})

    assert refused == [401] * 5
    assert slowed_page.status_code == 429 and slowed_page.headers["Retry-After"] == "1"
    assert "wait 1 seconds" in slowed_page.get_data(as_text=True)
    assert slowed_api.status_code == 429 and slowed_api.json["field"] == "Authorization"
    assert after_the_wait.status_code == 302


def test_repeated_unknown_api_tokens_wait_longer_each_time(locked_app):
    from automl_server.login_throttle import failed_logins

    now = [0.0]
    failed_logins(locked_app).clock = lambda: now[0]
    client = locked_app.test_client()

    def guess() -> int:
        return client.get("/api/v1/jobs", headers={"Authorization": "Bearer aml_guess"}).status_code

    first_five = [guess() for _ in range(5)]
    waits = []
    for _ in range(3):
        answer = client.get("/api/v1/jobs", headers={"Authorization": "Bearer aml_guess"})
        waits.append(int(answer.headers["Retry-After"]))
        now[0] += waits[-1]
        assert guess() == 401  # after waiting, the attempt is checked (and fails)

    assert first_five == [401] * 5 and waits == [1, 2, 4]


def test_a_comparisons_page_carries_its_matrix_for_the_live_view(client, app):
    from automl_server.db.models import Comparison

    targets = [{"device": "pi", "runtime": "onnxruntime"}, {"device": "phone", "runtime": "litert"}]
    with app.extensions["automl"].db.session() as session:
        comparison = Comparison(dataset_name="pets", targets=targets, cells={"pi:onnxruntime|phone:litert": 2.5})
        session.add(comparison)
        session.flush()
        for target, ms in zip(targets, (1.5, 0.8)):
            session.add(Job(dataset_name="pets", device_name=target["device"], runtime=target["runtime"], space="tiny",
                            pipeline="standard", latency_target_ms=1.0, params={}, state="succeeded",
                            comparison_id=comparison.id,
                            result={"report": {"accuracy": {"test": 0.9}, "latency": {"measured_ms": ms}}}))
        comparison_id = comparison.id

    page = client.get(f"/comparisons/{comparison_id}")
    listed = client.get("/compare").get_data(as_text=True)
    missing = client.get("/comparisons/nope")

    html = page.get_data(as_text=True)
    data = json.loads(re.search(r'id="comparison-data">(.*?)</script>', html, re.S).group(1))  # type: ignore[union-attr]
    assert page.status_code == 200 and "Comparison on pets" in html
    assert data["matrix"] == [[1.5, 2.5], [None, 0.8]] and data["done"] is False  # phone's network not yet on pi
    assert f'href="/comparisons/{comparison_id}"' in listed and "New search" in listed
    assert missing.status_code == 404
