"""/api/v1/devices: the device farm. Agents register and send heartbeats; a
device is online while its heartbeats keep coming. A device is owned by its
agent (automl_server.devices.ownership) and retired with DELETE
(automl_server.devices.retire)."""
from __future__ import annotations

import logging

from flask import g, request
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from automl_server import audit_log
from automl_server.api.blueprint import api_blueprint, registry
from automl_server.api.pagination import decode_token, encode_token
from automl_server.api.problems import ProblemError, not_found
from automl_server.api.schemas import (
    DeviceDeleteQuery, DeviceList, DeviceOut, DeviceRegister, DeviceRegistered, DeviceRetired, HeartbeatIn, PageQuery,
    RuntimeOut,
)
from automl_server.db.models import Device, device_status, utcnow
from automl_server.devices import ownership, retire
from automl_server.devices.ownership import AGENT_TOKEN_HEADER
from automl_server.service_state import state

# Device changes are logged here and written to the audit log (automl_server.audit_log).
log = logging.getLogger("automl.devices")


def _who() -> dict[str, str | None]:
    """The caller, as an audit row records it."""
    return {"token_name": g.get("token_name"), "token_prefix": g.get("audit_token_prefix"),
            "method": request.method, "path": request.path[:500], "address": (request.remote_addr or "")[:100] or None}


def to_out(device: Device, timeout_s: float) -> DeviceOut:
    return DeviceOut(
        id=device.id, name=device.name, kind=device.kind, description=device.description,
        status=device_status(device, timeout_s), queue=device.queue_name,
        runtimes=[RuntimeOut(name=r.name, version=r.version) for r in device.runtimes],
        info=device.info, agent_version=device.agent_version, last_heartbeat_at=device.last_heartbeat_at,
        registered_at=device.registered_at,
    )


_AGENT_HEADER_DOC = ("The device's agent token (returned once by its first registration); needed to "
                     "re-register an existing device and with every heartbeat.")


def _agent_token() -> str | None:
    return request.headers.get(AGENT_TOKEN_HEADER) or None


def _not_owner(exc: ownership.NotTheOwner, status: int) -> ProblemError:
    return ProblemError(status, "Conflict" if status == 409 else "Forbidden", exc.detail,
                        field=AGENT_TOKEN_HEADER, slug="device-owned-by-its-agent")


@registry.operation(
    api_blueprint, "/devices", "POST", scope="agent", summary="Register (or re-register) a device", tag="devices",
    body=DeviceRegister, responses={200: DeviceRegistered, 201: DeviceRegistered}, errors=(409,),
    headers={AGENT_TOKEN_HEADER: {"required": False, "schema": {"type": "string"}, "description": _AGENT_HEADER_DOC}},
)
def register_device(body: DeviceRegister) -> tuple[DeviceRegistered, int]:
    """Registration counts as a first heartbeat: the device is online at once.
    The first registration of a name returns the device's agent token
    (``agent_token``, once); re-registering needs it (409 otherwise: retire the
    device first with DELETE)."""
    s = state()
    spec = ownership.RegistrationSpec(
        name=body.name, kind=body.kind, description=body.description,
        runtimes={r.name: r.version for r in body.runtimes}, info=dict(body.info), agent_version=body.agent_version)
    refused: ownership.NotTheOwner | None = None
    with s.db.session() as session:
        try:
            done = ownership.register(session, spec, _agent_token(), s.settings.heartbeat_timeout_s)
        except ownership.NotTheOwner as exc:  # raised before anything is changed
            refused = exc
        else:
            reused = retire.reuse_latency(session, body.name) if done.created and body.reuse_latency else 0
            action = "register" if done.created else "claim" if done.agent_token is not None else "re-register"
            audit_log.record(session, audit_log.DEVICE, action, subject=body.name,
                             status=201 if done.created else 200,
                             detail=f"kind {body.kind}; runtimes {', '.join(spec.runtimes) or 'none'}"
                                    + (f"; {reused} latency target(s) reused" if reused else ""), **_who())
            out = DeviceRegistered(**to_out(done.device, s.settings.heartbeat_timeout_s).model_dump(),
                                   agent_token=done.agent_token, latency_targets_reused=reused)
            if done.agent_token is not None or reused:
                log.info("device %s registered (%s)%s", body.name, "new" if done.created else "claimed",
                         f", {reused} latency target(s) reused" if reused else "")
    if refused is not None:
        log.warning("registration of device %s from %s refused: no valid agent token", body.name,
                    request.remote_addr)
        audit_log.record_apart(s.db, audit_log.DEVICE, "register-refused", subject=body.name, status=409,
                               detail=refused.detail[:2000], **_who())
        raise _not_owner(refused, 409)
    return out, 201 if done.created else 200


@registry.operation(
    api_blueprint, "/devices", "GET", scope="read", summary="List devices", tag="devices", query=PageQuery,
    responses={200: DeviceList},
)
def list_devices(query: PageQuery) -> DeviceList:
    s = state()
    stmt = select(Device).options(selectinload(Device.runtimes)).order_by(Device.name)
    if query.page_token:
        (last_name,) = decode_token(query.page_token, 1)
        stmt = stmt.where(Device.name > str(last_name))
    with s.db.session() as session:
        rows = list(session.scalars(stmt.limit(query.page_size + 1)))
        token = None
        if len(rows) > query.page_size:
            rows = rows[: query.page_size]
            token = encode_token([rows[-1].name])
        return DeviceList(devices=[to_out(d, s.settings.heartbeat_timeout_s) for d in rows], next_page_token=token)


def _get(session: Session, name: str) -> Device:
    device = session.scalar(select(Device).where(Device.name == name).options(selectinload(Device.runtimes)))
    if device is None:
        raise not_found("device", name)
    return device


@registry.operation(
    api_blueprint, "/devices/<name>", "GET", scope="read", summary="Get a device", tag="devices",
    responses={200: DeviceOut}, errors=(404,),
)
def get_device(name: str) -> DeviceOut:
    s = state()
    with s.db.session() as session:
        return to_out(_get(session, name), s.settings.heartbeat_timeout_s)


@registry.operation(
    api_blueprint, "/devices/<name>/heartbeat", "POST", scope="agent", summary="Heartbeat from a device's agent", tag="devices",
    body=HeartbeatIn, responses={200: DeviceOut}, errors=(403, 404),
    headers={AGENT_TOKEN_HEADER: {"required": True, "schema": {"type": "string"}, "description": _AGENT_HEADER_DOC}},
)
def heartbeat(name: str, body: HeartbeatIn) -> DeviceOut:
    s = state()
    refused: ownership.NotTheOwner | None = None
    with s.db.session() as session:
        device = _get(session, name)
        try:
            ownership.check_heartbeat(device, _agent_token())
        except ownership.NotTheOwner as exc:
            refused = exc
        else:
            device.last_heartbeat_at = utcnow()
            if body.info is not None:
                device.info = {**device.info, **body.info}
            session.flush()
            return to_out(device, s.settings.heartbeat_timeout_s)
    # Written after the request's own transaction: on SQLite a second one would wait for it.
    audit_log.record_apart(s.db, audit_log.DEVICE, "heartbeat-refused", subject=name, status=403,
                           detail=refused.detail[:2000], **_who())
    raise _not_owner(refused, 403)


@registry.operation(
    api_blueprint, "/devices/<name>", "DELETE", scope="admin", summary="Retire a device", tag="devices", query=DeviceDeleteQuery,
    responses={200: DeviceRetired}, errors=(404, 409),
)
def delete_device(name: str, query: DeviceDeleteQuery) -> DeviceRetired:
    """Refused (409, listing them) while the device has queued or running jobs,
    unless ``force`` (which cancels them). Its jobs keep their records; its
    latency tables are kept (``latency_archive``) for a device of the same
    name that registers with ``reuse_latency``."""
    s = state()
    with s.db.session() as session:
        device = _get(session, name)
        try:
            done = retire.retire(session, device, force=query.force)
        except retire.DeviceBusy as exc:
            raise ProblemError(409, "Conflict", str(exc), field="force", slug="device-busy", jobs=exc.job_ids) from None
        log.info("device %s retired (cancelled jobs: %s; latency kept as %s)", name,
                 ", ".join(done.cancelled_jobs) or "none", done.latency_archive or "-")
        audit_log.record(session, audit_log.DEVICE, "retire", subject=name, status=200,
                         detail=f"cancelled jobs: {', '.join(done.cancelled_jobs) or 'none'}; latency kept as "
                                f"{done.latency_archive or '-'}", **_who())
        return DeviceRetired(name=done.name, cancelled_jobs=done.cancelled_jobs, latency_archive=done.latency_archive,
                             latency_targets_kept=done.latency_targets_kept)
