"""/api/v1/devices: the device farm. Agents register and send heartbeats; a
device is online while its heartbeats keep coming."""
from __future__ import annotations



from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from automl_server.api.blueprint import api_blueprint, registry
from automl_server.api.pagination import decode_token, encode_token
from automl_server.api.problems import not_found
from automl_server.api.schemas import DeviceList, DeviceOut, DeviceRegister, HeartbeatIn, PageQuery, RuntimeOut
from automl_server.db.models import Device, DeviceRuntime, device_status, utcnow
from automl_server.service_state import state


def to_out(device: Device, timeout_s: float) -> DeviceOut:
    return DeviceOut(
        id=device.id, name=device.name, kind=device.kind, description=device.description,
        status=device_status(device, timeout_s), queue=device.queue_name,
        runtimes=[RuntimeOut(name=r.name, version=r.version) for r in device.runtimes],
        info=device.info, agent_version=device.agent_version, last_heartbeat_at=device.last_heartbeat_at,
        registered_at=device.registered_at,
    )


def upsert_device(session: Session, spec: DeviceRegister, *, heartbeat: bool) -> tuple[Device, bool]:
    """Create or update a device by name; an agent re-registers on every start."""
    device = session.scalar(select(Device).where(Device.name == spec.name).options(selectinload(Device.runtimes)))
    created = device is None
    if device is None:
        device = Device(name=spec.name, kind=spec.kind)
        session.add(device)
    device.kind = spec.kind
    device.description = spec.description
    device.info = dict(spec.info)
    device.agent_version = spec.agent_version
    by_name = {r.name: r for r in device.runtimes}
    wanted = {r.name: r.version for r in spec.runtimes}
    device.runtimes = [by_name.get(n) or DeviceRuntime(name=n) for n in wanted]
    for runtime in device.runtimes:
        runtime.version = wanted[runtime.name]
    if heartbeat:
        device.last_heartbeat_at = utcnow()
    session.flush()
    return device, created


@registry.operation(
    api_blueprint, "/devices", "POST", summary="Register (or re-register) a device", tag="devices",
    body=DeviceRegister, responses={200: DeviceOut, 201: DeviceOut},
)
def register_device(body: DeviceRegister) -> tuple[DeviceOut, int]:
    """Registration counts as a first heartbeat: the device is online at once."""
    s = state()
    with s.db.session() as session:
        device, created = upsert_device(session, body, heartbeat=True)
        out = to_out(device, s.settings.heartbeat_timeout_s)
    return out, 201 if created else 200


@registry.operation(
    api_blueprint, "/devices", "GET", summary="List devices", tag="devices", query=PageQuery,
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
    api_blueprint, "/devices/<name>", "GET", summary="Get a device", tag="devices",
    responses={200: DeviceOut}, errors=(404,),
)
def get_device(name: str) -> DeviceOut:
    s = state()
    with s.db.session() as session:
        return to_out(_get(session, name), s.settings.heartbeat_timeout_s)


@registry.operation(
    api_blueprint, "/devices/<name>/heartbeat", "POST", summary="Heartbeat from a device's agent", tag="devices",
    body=HeartbeatIn, responses={200: DeviceOut}, errors=(404,),
)
def heartbeat(name: str, body: HeartbeatIn) -> DeviceOut:
    s = state()
    with s.db.session() as session:
        device = _get(session, name)
        device.last_heartbeat_at = utcnow()
        if body.info is not None:
            device.info = {**device.info, **body.info}
        session.flush()
        return to_out(device, s.settings.heartbeat_timeout_s)
