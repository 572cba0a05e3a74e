"""Job webhooks, signed per Standard Webhooks (https://www.standardwebhooks.com).

A job may name a receiver (``Job.webhook_url``) and carry a secret
(``Job.webhook_secret``, ``whsec_<base64>``). Every state change of the job is
POSTed there by the `deliver_webhook` task on the ``default`` queue, with the
headers ``webhook-id`` (``evt_<event id>``, the same on every retry so that
receivers can deduplicate), ``webhook-timestamp`` (unix seconds of the
attempt) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` of
``"<id>.<timestamp>.<body>"``). Failed deliveries are retried with exponential
back-off; what finally happened is written to the job's timeline as a "log"
event. `verify` is the receiver's side, for integrators and tests.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError
from celery import Celery, shared_task
from celery.exceptions import Retry

from automl_server.settings import settings_of
from automl_server.db.engine import get_database
from automl_server.db.models import Job, JobEvent
from automl_server.jobs.service import record_event
from automl_server.webhook_targets import ForbiddenTarget, IpAddress, UnresolvableTarget, resolve_target

DELIVER_WEBHOOK = "automl.deliver_webhook"
SECRET_PREFIX = "whsec_"
MAX_URL_LENGTH = 2000
REQUEST_TIMEOUT_S = 10.0
USER_AGENT = "automl-webhooks/1"
# How https receivers' certificates are checked (requests' ``verify``): True is the
# certifi bundle; a path is a CA bundle (tests use their own CA).
CA_BUNDLE: bool | str = True
# Longest receiver-supplied text (an error) kept in a timeline message.
_MAX_REASON_CHARS = 300

logger = logging.getLogger(__name__)


class WebhookVerificationError(ValueError):
    """A received webhook is not authentic or not fresh; the message says why."""


# -- signing ---------------------------------------------------------------
def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 24 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def _secret_key(secret: str) -> bytes:
    encoded = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ValueError(f"webhook secret {secret[:10]}... is not valid base64; accepted: 'whsec_' followed by "
                         "standard base64 of the key bytes (as new_secret() makes), or the bare base64")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` entry for one message: ``v1,<base64 HMAC-SHA256>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, tolerance_s: float = 300,
           now: float | None = None) -> None:
    """Check a received webhook; raises `WebhookVerificationError` unless one of
    its signatures matches and its timestamp is within ``tolerance_s`` of now."""
    lowered = {name.lower(): value for name, value in headers.items()}
    missing = [name for name in ("webhook-id", "webhook-timestamp", "webhook-signature") if not lowered.get(name)]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    msg_id, raw_timestamp = lowered["webhook-id"], lowered["webhook-timestamp"]
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {raw_timestamp!r} is not unix seconds") from None
    now = time.time() if now is None else now
    if timestamp < now - tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp {timestamp} is more than {tolerance_s:g} s old")
    if timestamp > now + tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp {timestamp} is more than {tolerance_s:g} s in the future")
    expected = sign(secret, msg_id, timestamp, body).encode()
    # Several signatures let a sender rotate secrets; any one that matches will do.
    for candidate in lowered["webhook-signature"].split():
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode(), expected):
            return
    raise WebhookVerificationError("no webhook-signature matches the body and the secret")


# -- requests --------------------------------------------------------------
def validate_url(url: str) -> str:
    """``url`` unchanged if it can receive webhooks: an absolute http(s) URL with
    a host, at most 2000 characters; otherwise ValueError saying what is wrong."""
    accepted = f"accepted: an absolute http:// or https:// URL with a host, at most {MAX_URL_LENGTH} characters"
    if not isinstance(url, str) or not url:
        raise ValueError(f"webhook URL {url!r} is empty or not text; {accepted}")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"webhook URL is {len(url)} characters long; {accepted}")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValueError(f"webhook URL {url!r} contains whitespace or control characters; {accepted}")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"webhook URL {url!r} has scheme {parts.scheme or 'none'!r}; {accepted}")
    try:
        host, _port = parts.hostname, parts.port
    except ValueError:
        raise ValueError(f"webhook URL {url!r} has an invalid host or port; {accepted}") from None
    if not host:
        raise ValueError(f"webhook URL {url!r} has no host; {accepted}")
    return url


def event_payload(job: Job, event: JobEvent) -> dict[str, Any]:
    """The JSON body announcing one state event of ``job``. State, stage and
    error are those of the event (the job may have moved on since)."""
    data = event.data or {}
    return {
        "type": "job.state_changed",
        "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
        "data": {
            "job_id": job.id,
            "state": data.get("state", job.state),
            "stage": event.stage,
            "progress": data.get("progress", job.progress),
            "error": data.get("error", job.error),
            "event_id": event.id,
            "message": event.message,
            "links": {"self": f"/api/v1/jobs/{job.id}", "report": f"/api/v1/jobs/{job.id}/report"},
            # On the final "succeeded": whether the network's measured latency met the target.
            **({"target_met": data["target_met"]} if "target_met" in data else {}),
        },
    }


# -- delivery --------------------------------------------------------------
class PinnedAdapter(HTTPAdapter):
    """Connects to ``address`` whatever the URL's host name resolves to now: the
    address that was checked (`resolve_target`), so that a second DNS answer
    (DNS rebinding) is never asked for. The request keeps its Host header (set
    by `_post`); for https the SNI name and the certificate's host name check
    stay those of the URL's host, so a certificate for the name is still required."""

    def __init__(self, address: IpAddress, host_name: str) -> None:
        self.address, self.host_name = address, host_name
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(
            self, request: requests.PreparedRequest, verify: Any, cert: Any = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        host_params["host"] = str(self.address)
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = self.host_name
            pool_kwargs["assert_hostname"] = self.host_name
        return host_params, pool_kwargs


def _host_header(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if parts.scheme.lower() == "https" else 80
    return host if parts.port in (None, default_port) else f"{host}:{parts.port}"


def _post(url: str, addresses: list[IpAddress], secret: str, msg_id: str,
          body: bytes) -> requests.Response | str:
    """POST one attempt to ``url``, connecting only to ``addresses`` (in turn, the
    next one when a connection cannot be made); the response, or why there was none."""
    timestamp = int(time.time())
    headers = {
        "host": _host_header(url),
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    reason = "no address to connect to"
    for address in addresses:
        with requests.Session() as session:
            # No proxies from the environment: a proxy would resolve the name again.
            session.trust_env = False
            adapter = PinnedAdapter(address, urlsplit(url).hostname or "")
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            try:
                # No redirects: a POST that is redirected is a receiver misconfiguration
                # (and following them would let a receiver point us anywhere).
                return session.post(url, data=body, headers=headers, timeout=REQUEST_TIMEOUT_S,
                                    allow_redirects=False, verify=CA_BUNDLE)
            except requests.ConnectTimeout:
                reason = f"no connection to {address} within {REQUEST_TIMEOUT_S:g} s"
            except requests.Timeout:
                return f"no answer within {REQUEST_TIMEOUT_S:g} s"
            except requests.ConnectionError as exc:
                reason = f"{exc.__class__.__name__}: {exc}"[:_MAX_REASON_CHARS]
                if not isinstance(getattr(exc.args[0] if exc.args else None, "reason", None),
                                  NewConnectionError):
                    return reason  # connected, then failed: the next address would repeat the POST
            except requests.RequestException as exc:
                return f"{exc.__class__.__name__}: {exc}"[:_MAX_REASON_CHARS]
    return reason


def _log(db_url: str, job_id: str, message: str) -> None:
    # Only "log" events here: "state" events are what trigger webhooks.
    with get_database(db_url).session() as session:
        job = session.get(Job, job_id)
        if job is not None:
            record_event(session, job, "log", message, stage=job.stage)


@shared_task(name=DELIVER_WEBHOOK, bind=True, acks_late=True, max_retries=None)
def deliver_webhook(self: Any, job_id: str, event_id: int) -> str:
    """POST one job event to the job's webhook; retried with back-off until a
    2xx, a 410 Gone, or ``webhook_max_attempts`` attempts. Returns the outcome."""
    settings = settings_of(self.app)
    db_url = settings.resolved_database_url
    with get_database(db_url).session() as session:
        job = session.get(Job, job_id)
        event = session.get(JobEvent, event_id)
        if job is None or event is None or event.job_id != job_id or not job.webhook_url:
            return "skipped"
        url, secret = job.webhook_url, job.webhook_secret or ""
        body = json.dumps(event_payload(job, event), separators=(",", ":")).encode()
    msg_id = f"evt_{event_id}"
    attempt = self.request.retries + 1
    max_attempts = max(1, settings.webhook_max_attempts)

    try:
        _secret_key(secret)
    except ValueError as exc:  # a secret that cannot sign: no retry will help
        _log(db_url, job_id, f"webhook delivery to {url} not attempted: {exc}")
        return "failed"
    try:
        # Again at delivery: the name may resolve elsewhere now than at submission. The
        # addresses checked are the ones connected to (no second lookup: DNS rebinding).
        addresses = resolve_target(url, allow_private=settings.webhook_allow_private)
    except ForbiddenTarget as exc:  # no retry will make it public
        _log(db_url, job_id, f"webhook delivery to {url} refused: {exc}")
        return "refused"
    except UnresolvableTarget as exc:
        outcome: requests.Response | str = str(exc)
    else:
        outcome = _post(url, addresses, secret, msg_id, body)
    if isinstance(outcome, requests.Response):
        if 200 <= outcome.status_code < 300:
            return "delivered"
        if outcome.status_code == 410:
            # Standard Webhooks: 410 Gone means the receiver wants no more deliveries.
            _log(db_url, job_id, f"webhook delivery to {url} stopped: the receiver answered 410 Gone")
            return "gone"
        reason = f"HTTP {outcome.status_code}"
    else:
        reason = outcome

    if attempt >= max_attempts:
        _log(db_url, job_id, f"webhook delivery to {url} failed after {attempt} attempts: {reason}")
        return "failed"
    countdown = settings.webhook_backoff_s * 2 ** self.request.retries
    _log(db_url, job_id, f"webhook attempt {attempt}/{max_attempts} to {url} failed ({reason}); "
                         f"retrying in {countdown:g} s")
    raise self.retry(countdown=countdown)


def notify(celery: Celery, job_id: str, event_ids: list[int]) -> None:
    """Queue one webhook delivery per event; never raises (a webhook must not
    fail a job). Call after the events are committed."""
    task = celery.tasks[DELIVER_WEBHOOK]
    for event_id in event_ids:
        try:
            task.apply_async(args=(job_id, event_id), queue="default")
        except Retry:
            # Only an eager app with task_eager_propagates gets here: Celery then
            # raises the first retry to the caller instead of running it.
            logger.warning("webhook of job %s, event %s failed; an eager Celery that propagates errors "
                           "does not run retries", job_id, event_id)
        except Exception:  # the broker is down, or an eager run raised
            logger.exception("could not queue the webhook of job %s, event %s", job_id, event_id)
