"""Job webhooks: Standard Webhooks signatures, URL checks, and delivery with
retries to a real HTTP receiver on the loopback interface."""
from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import urllib3.util.connection
from celery import Celery, signals
from kombu.exceptions import OperationalError
from sqlalchemy import select

from automl_server import webhooks
from automl_server.celery_app import make_celery
from automl_server.db.engine import get_database
from automl_server.db.models import Job, JobEvent
from automl_server.jobs.service import record_event
from automl_server.webhook_targets import ForbiddenTarget, UnresolvableTarget, check_target
from automl_server.webhooks import (
    DELIVER_WEBHOOK,
    WebhookVerificationError,
    new_secret,
    notify,
    sign,
    validate_url,
    verify,
)
from tests.conftest import make_settings

# The test vector of the Standard Webhooks reference libraries.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def signed_headers(secret: str, body: bytes, timestamp: int = SPEC_TIMESTAMP) -> dict[str, str]:
    return {"webhook-id": SPEC_ID, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, SPEC_ID, timestamp, body)}


# -- signing ---------------------------------------------------------------
def test_sign_reproduces_the_standard_webhooks_test_vector():
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_new_secrets_are_distinct_and_sign_verifiable_messages():
    first, second = new_secret(), new_secret()

    assert first.startswith("whsec_") and first != second
    verify(first, signed_headers(first, b"{}"), b"{}", now=SPEC_TIMESTAMP)


def test_sign_refuses_a_secret_that_is_not_base64():
    with pytest.raises(ValueError, match="not valid base64; accepted: 'whsec_' followed by"):
        sign("whsec_not*base64!", SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)


def test_verify_accepts_the_test_vector_among_several_signatures():
    headers = {"Webhook-Id": SPEC_ID, "Webhook-Timestamp": str(SPEC_TIMESTAMP),
               "Webhook-Signature": f"v1,Zm9yZ2Vk {SPEC_SIGNATURE}"}

    verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP + 10)  # does not raise


@pytest.mark.parametrize(("secret", "headers", "body", "message"), [
    (SPEC_SECRET, signed_headers(SPEC_SECRET, SPEC_BODY), b'{"test": 2432232315}', "no webhook-signature matches"),
    (new_secret(), signed_headers(SPEC_SECRET, SPEC_BODY), SPEC_BODY, "no webhook-signature matches"),
    (SPEC_SECRET, signed_headers(SPEC_SECRET, SPEC_BODY, SPEC_TIMESTAMP - 301), SPEC_BODY, "more than 300 s old"),
    (SPEC_SECRET, signed_headers(SPEC_SECRET, SPEC_BODY, SPEC_TIMESTAMP + 301), SPEC_BODY, "in the future"),
    (SPEC_SECRET, {"webhook-id": SPEC_ID}, SPEC_BODY, "missing header.*webhook-timestamp, webhook-signature"),
    (SPEC_SECRET, {**signed_headers(SPEC_SECRET, SPEC_BODY), "webhook-timestamp": "yesterday"}, SPEC_BODY,
     "'yesterday' is not unix seconds"),
], ids=["tampered-body", "wrong-secret", "stale", "future", "missing-headers", "bad-timestamp"])
def test_verify_refuses(secret, headers, body, message):
    with pytest.raises(WebhookVerificationError, match=message):
        verify(secret, headers, body, now=SPEC_TIMESTAMP)


# -- URLs ------------------------------------------------------------------
def test_validate_url_accepts_http_and_https_urls():
    for url in ("https://hooks.example.com/automl?x=1", "http://127.0.0.1:8080/hook"):
        assert validate_url(url) == url


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://example.com/hook", "has scheme 'ftp'"),
    ("/api/hook", "has scheme 'none'"),
    ("javascript:alert(1)", "has scheme 'javascript'"),
    ("https:///path-only", "has no host"),
    ("http://example.com:99999/", "invalid host or port"),
    ("https://example.com/a b", "whitespace"),
    ("", "empty"),
    ("https://example.com/" + "a" * 2000, "2020 characters long"),
])
def test_validate_url_refuses(url, message):
    with pytest.raises(ValueError, match=message) as refused:
        validate_url(url)
    assert "accepted: an absolute http:// or https:// URL with a host" in str(refused.value)


# -- delivery --------------------------------------------------------------
@dataclass
class Receiver:
    """A webhook receiver answering ``statuses`` in turn (the last one repeats)."""

    url: str
    statuses: list[int]
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    redirect_to: str | None = None  # sent as Location with every answer
    port: int = 0

    def answer(self) -> int:
        return self.statuses[min(len(self.received), len(self.statuses)) - 1]


@contextmanager
def serving(state: Receiver, tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """Run ``state``'s receiver on a loopback port (https with ``tls``) while inside."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(state.answer())
            if state.redirect_to:
                self.send_header("Location", state.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.port = server.server_address[1]
    state.url = f"{'https' if tls else 'http'}://127.0.0.1:{state.port}/hooks/automl"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving(Receiver(url="", statuses=[200])) as state:
        yield state


def eager_celery(tmp_path: Path, database_url: str, **overrides: object) -> Celery:
    # The receivers of these tests listen on loopback, which webhooks refuse unless allowed.
    values: dict[str, object] = {"webhook_backoff_s": 0.01, "webhook_allow_private": True, **overrides}
    celery = make_celery(make_settings(tmp_path, database_url, **values), eager=True)
    # Celery runs `self.retry` in-process only when eager errors do not propagate:
    # Task.apply then re-applies the retry signature at once (countdown ignored)
    # with request.retries + 1, as a worker would after the countdown. With
    # task_eager_propagates on (make_celery's eager default) the first Retry is
    # raised to the caller instead; see test_an_eager_app_that_propagates_...
    celery.conf.task_eager_propagates = False
    return celery


def job_with_state_event(database_url: str, webhook_url: str | None, secret: str | None) -> tuple[str, int]:
    with get_database(database_url).session() as session:
        job = Job(dataset_name="pets", device_name="pi-4", runtime="litert", space="proxyless-mobile",
                  pipeline="search", latency_target_ms=25.0, webhook_url=webhook_url, webhook_secret=secret,
                  state="running", stage="validate", progress=0.1)
        session.add(job)
        session.flush()
        event = record_event(session, job, "state", "stage validate started", stage="validate",
                             data={"state": "running"})
        return job.id, event.id


def timeline(database_url: str, job_id: str) -> list[JobEvent]:
    with get_database(database_url).session() as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


@pytest.fixture
def retry_countdowns() -> Iterator[list[float]]:
    countdowns: list[float] = []

    def on_retry(sender: object, reason: object, **_: object) -> None:
        countdowns.append(reason.when)  # type: ignore[attr-defined]

    signals.task_retry.connect(on_retry, weak=False)
    yield countdowns
    signals.task_retry.disconnect(on_retry)


def test_delivery_is_retried_with_back_off_under_one_id_until_accepted(
        tmp_path, database_url, receiver, retry_countdowns):
    receiver.statuses = [500, 500, 200]
    secret = new_secret()
    job_id, event_id = job_with_state_event(database_url, receiver.url, secret)

    notify(eager_celery(tmp_path, database_url), job_id, [event_id])

    assert len(receiver.received) == 3
    assert {headers["webhook-id"] for headers, _ in receiver.received} == {f"evt_{event_id}"}
    for headers, body in receiver.received:
        verify(secret, headers, body)
        assert headers["content-type"] == "application/json" and headers["user-agent"] == "automl-webhooks/1"
    payload = json.loads(receiver.received[-1][1])
    assert payload["type"] == "job.state_changed"
    assert payload["data"]["job_id"] == job_id and payload["data"]["event_id"] == event_id
    assert payload["data"]["state"] == "running" and payload["data"]["stage"] == "validate"
    assert payload["data"]["links"]["report"] == f"/api/v1/jobs/{job_id}/report"
    assert retry_countdowns == [0.01, 0.02]
    events = timeline(database_url, job_id)
    assert [e.kind for e in events] == ["state", "log", "log"]
    assert "attempt 1/8" in events[1].message and "HTTP 500" in events[1].message


def test_delivery_gives_up_after_max_attempts_and_says_so_on_the_timeline(tmp_path, database_url, receiver):
    receiver.statuses = [500]
    job_id, event_id = job_with_state_event(database_url, receiver.url, new_secret())

    notify(eager_celery(tmp_path, database_url, webhook_max_attempts=3), job_id, [event_id])

    assert len(receiver.received) == 3
    last = timeline(database_url, job_id)[-1]
    assert last.kind == "log"
    assert last.message == f"webhook delivery to {receiver.url} failed after 3 attempts: HTTP 500"


def test_unreachable_receiver_is_retried_then_reported(tmp_path, database_url):
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    job_id, event_id = job_with_state_event(database_url, url, new_secret())

    notify(eager_celery(tmp_path, database_url, webhook_max_attempts=2), job_id, [event_id])

    last = timeline(database_url, job_id)[-1]
    assert last.message.startswith(f"webhook delivery to {url} failed after 2 attempts: ConnectionError")


def test_410_gone_stops_delivery_at_once(tmp_path, database_url, receiver):
    receiver.statuses = [410]
    job_id, event_id = job_with_state_event(database_url, receiver.url, new_secret())

    notify(eager_celery(tmp_path, database_url), job_id, [event_id])

    assert len(receiver.received) == 1
    assert [e.kind for e in timeline(database_url, job_id)] == ["state", "log"]
    assert "410 Gone" in timeline(database_url, job_id)[-1].message


def test_job_without_webhook_sends_nothing(tmp_path, database_url, receiver):
    job_id, event_id = job_with_state_event(database_url, None, None)

    notify(eager_celery(tmp_path, database_url), job_id, [event_id])

    assert receiver.received == []
    assert [e.kind for e in timeline(database_url, job_id)] == ["state"]


def test_each_event_is_its_own_delivery(tmp_path, database_url, receiver):
    job_id, first = job_with_state_event(database_url, receiver.url, new_secret())
    with get_database(database_url).session() as session:
        job = session.get(Job, job_id)
        job.state, job.error = "failed", "out of memory"
        second = record_event(session, job, "state", "job failed: out of memory", stage="validate",
                              data={"state": "failed", "error": "out of memory"}).id

    notify(eager_celery(tmp_path, database_url), job_id, [first, second])

    payloads = [json.loads(body)["data"] for _, body in receiver.received]
    assert [(p["event_id"], p["state"]) for p in payloads] == [(first, "running"), (second, "failed")]
    assert payloads[1]["error"] == "out of memory"


def test_notify_never_raises_when_the_broker_is_down(tmp_path, database_url, monkeypatch, caplog):
    celery = eager_celery(tmp_path, database_url)

    def broker_down(*args: object, **kwargs: object) -> None:
        raise OperationalError("[Errno 111] Connection refused")

    monkeypatch.setattr(celery.tasks[DELIVER_WEBHOOK], "apply_async", broker_down)

    notify(celery, "some-job", [1, 2])  # does not raise

    assert caplog.text.count("could not queue the webhook of job some-job") == 2


def test_an_eager_app_that_propagates_errors_tries_once_and_does_not_raise(tmp_path, database_url, receiver):
    receiver.statuses = [500, 200]
    job_id, event_id = job_with_state_event(database_url, receiver.url, new_secret())
    celery = make_celery(make_settings(tmp_path, database_url, webhook_backoff_s=0.01, webhook_allow_private=True),
                         eager=True)

    notify(celery, job_id, [event_id])

    assert len(receiver.received) == 1


# -- no server-side request forgery --------------------------------------------------
def fake_dns(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    """A getaddrinfo answering from ``table`` (host -> addresses)."""
    def resolve(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in table[host]]
    return resolve


DNS = fake_dns({"localhost": ["127.0.0.1", "::1"], "hooks.example.com": ["93.184.215.14"],
                "rebound.example.com": ["93.184.215.14", "10.1.2.3"], "metadata.internal": ["169.254.169.254"]})


@pytest.mark.parametrize(("url", "address", "kind"), [
    ("http://127.0.0.1:8080/hook", "127.0.0.1", "loopback"),
    ("http://localhost/hook", "127.0.0.1", "loopback"),
    ("http://[::1]/hook", "::1", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "::ffff:7f00:1", "loopback"),
    ("http://169.254.169.254/latest/meta-data", "169.254.169.254", "link-local"),
    ("http://metadata.internal/", "169.254.169.254", "link-local"),
    ("http://[fe80::1]/hook", "fe80::1", "link-local"),
    ("http://10.0.0.5/hook", "10.0.0.5", "private"),
    ("https://192.168.1.20/hook", "192.168.1.20", "private"),
    ("http://100.64.0.1/hook", "100.64.0.1", "non-public"),
    ("http://0.0.0.0/hook", "0.0.0.0", "private"),
    ("http://rebound.example.com/hook", "10.1.2.3", "private"),  # every address is checked
])
def test_webhook_targets_off_the_public_internet_are_refused(url, address, kind):
    with pytest.raises(ForbiddenTarget) as refused:
        check_target(url, allow_private=False, resolve=DNS)

    assert f"points at {address} ({kind} address)" in str(refused.value)
    assert "AUTOML_WEBHOOK_ALLOW_PRIVATE=1" in str(refused.value)
    check_target(url, allow_private=True, resolve=DNS)  # the setting lets it through


def test_public_webhook_targets_pass_and_unknown_hosts_say_so():
    check_target("https://hooks.example.com/automl", allow_private=False, resolve=DNS)
    check_target("http://93.184.215.14:8443/x", allow_private=False, resolve=DNS)

    with pytest.raises(UnresolvableTarget, match="'nowhere.example' does not resolve"):
        check_target("http://nowhere.example/hook", allow_private=False, resolve=DNS)


def test_delivery_to_a_target_that_became_private_is_refused_without_retry(tmp_path, database_url, receiver):
    # Stored while allowed (or while its name resolved elsewhere); the server no longer allows it.
    job_id, event_id = job_with_state_event(database_url, receiver.url, new_secret())

    notify(eager_celery(tmp_path, database_url, webhook_allow_private=False), job_id, [event_id])

    assert receiver.received == []
    last = timeline(database_url, job_id)[-1]
    assert last.message.startswith(f"webhook delivery to {receiver.url} refused: ")
    assert "loopback address" in last.message


def test_a_redirect_is_never_followed(tmp_path, database_url, receiver):
    # The receiver answers 307 towards the metadata endpoint: the server must not go there.
    receiver.statuses, receiver.redirect_to = [307], "http://169.254.169.254/latest/meta-data"
    job_id, event_id = job_with_state_event(database_url, receiver.url, new_secret())

    notify(eager_celery(tmp_path, database_url, webhook_max_attempts=1), job_id, [event_id])

    assert len(receiver.received) == 1
    assert timeline(database_url, job_id)[-1].message == (
        f"webhook delivery to {receiver.url} failed after 1 attempts: HTTP 307")


# -- DNS rebinding: the delivery connects to the address that was checked ----------
@pytest.fixture
def public_receiver() -> Iterator[Receiver]:
    """A second receiver on loopback, standing for one on a public address."""
    with serving(Receiver(url="", statuses=[200])) as state:
        yield state


def test_a_name_rebound_to_loopback_after_the_check_does_not_reach_loopback(
        tmp_path, database_url, receiver, public_receiver, monkeypatch):
    # The attacker's DNS answers a public address to the check, then 127.0.0.1 (TTL 0) to any
    # later lookup, hoping the HTTP client resolves again and reaches `receiver` on loopback.
    real_getaddrinfo, lookups = socket.getaddrinfo, []

    def rebinding_dns(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != "hooks.rebind.example":
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        address = "93.184.215.14" if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    # No internet here: a connection to the public address is carried to `public_receiver`.
    real_connect, connected = urllib3.util.connection.create_connection, []

    def connect(address, *args, **kwargs):  # type: ignore[no-untyped-def]
        connected.append(address)
        if address[0] == "93.184.215.14":
            address = ("127.0.0.1", public_receiver.port)
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
    monkeypatch.setattr(urllib3.util.connection, "create_connection", connect)
    port = receiver.port
    url = f"http://hooks.rebind.example:{port}/hooks/automl"
    secret = new_secret()
    job_id, event_id = job_with_state_event(database_url, url, secret)

    notify(eager_celery(tmp_path, database_url, webhook_allow_private=False), job_id, [event_id])

    assert receiver.received == []  # nothing reached loopback
    assert lookups == ["hooks.rebind.example"]  # resolved once, by the check
    assert connected == [("93.184.215.14", port)]
    [(headers, body)] = public_receiver.received
    assert headers["host"] == f"hooks.rebind.example:{port}"
    verify(secret, headers, body)
    assert [e.kind for e in timeline(database_url, job_id)] == ["state"]  # delivered, nothing to log


def _certificate_for(tmp_path: Path, name: str) -> tuple[str, str]:
    """A self-signed certificate for DNS name ``name`` and its key, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.mark.parametrize("certificate_name", ["hooks.example.com", "other.example.com"])
def test_https_to_a_pinned_address_checks_the_certificate_against_the_url_host(
        tmp_path, monkeypatch, certificate_name):
    cert, key = _certificate_for(tmp_path, certificate_name)
    server_names: list[str | None] = []
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    tls.sni_callback = lambda _sock, name, _ctx: server_names.append(name)  # type: ignore[assignment,func-returns-value]
    monkeypatch.setattr(webhooks, "CA_BUNDLE", cert)

    with serving(Receiver(url="", statuses=[200]), tls) as state:
        url = f"https://hooks.example.com:{state.port}/hooks/automl"
        outcome = webhooks._post(url, [ipaddress.ip_address("127.0.0.1")], new_secret(), "evt_1", b"{}")

    assert server_names == ["hooks.example.com"]  # SNI: the URL's host, not the address
    if certificate_name == "hooks.example.com":
        assert getattr(outcome, "status_code", outcome) == 200
        assert state.received[0][0]["host"] == f"hooks.example.com:{state.port}"
    else:  # a certificate for another name is refused, as it would be without pinning
        assert isinstance(outcome, str) and "SSLError" in outcome and "hooks.example.com" in outcome
        assert state.received == []
