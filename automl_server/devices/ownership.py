"""Devices are owned by their agents.

The first registration of a device name issues an agent token, returned once;
only its SHA-256 is stored (the token is 256-bit random, so a slow hash buys
nothing, as for API tokens). Re-registering the device and sending its
heartbeats need that token: one stray ``POST /api/v1/devices`` can no longer
replace the runtimes of a device whose agent is still heartbeating.
A device whose agent lost its token is retired first (DELETE), then
registered again, optionally keeping its latency tables.
"""
from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from automl_server.auth import hash_token
from automl_server.db.models import Device, DeviceRuntime, device_status, utcnow
from device_agents.protocol import AGENT_TOKEN_HEADER  # sent beside Authorization (the API token)

AGENT_TOKEN_PREFIX = "agt_"


class NotTheOwner(Exception):
    """The caller does not hold the device's agent token; ``detail`` says what to do."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class RegistrationSpec:
    """What an agent announces about its device (the API's DeviceRegister)."""

    name: str
    kind: str
    description: str
    runtimes: dict[str, str]  # name -> version, in the agent's order
    info: dict[str, object]
    agent_version: str | None


@dataclass
class Registered:
    device: Device
    created: bool
    # The new agent token when one was issued (first registration, or the
    # claim of a device registered before tokens existed); None otherwise.
    agent_token: str | None


def new_agent_token() -> str:
    return AGENT_TOKEN_PREFIX + secrets.token_urlsafe(32)


def holds_token(device: Device, agent_token: str | None) -> bool:
    if device.agent_token_hash is None or not agent_token:
        return False
    return hmac.compare_digest(device.agent_token_hash, hash_token(agent_token))


def find_device(session: Session, name: str) -> Device | None:
    return session.scalar(select(Device).where(Device.name == name).options(selectinload(Device.runtimes)))


def _retire_hint(name: str) -> str:
    return (f"retire it first with DELETE /api/v1/devices/{name} (`automl devices delete {name}`), then "
            "register again (add \"reuse_latency\": true to keep its latency tables)")


def register(session: Session, spec: RegistrationSpec, agent_token: str | None, heartbeat_timeout_s: float) -> Registered:
    """Create the device, or update it for the agent holding its token.

    Raises NotTheOwner when the device exists and the caller lacks its token;
    the detail says whether the device is live and how to retire it.
    """
    device = find_device(session, spec.name)
    issued: str | None = None
    created = device is None
    if device is None:
        device = Device(name=spec.name, kind=spec.kind)
        session.add(device)
        issued = new_agent_token()
    elif device.agent_token_hash is None:
        issued = new_agent_token()  # registered before tokens existed: this registration claims it
    elif not holds_token(device, agent_token):
        live = device_status(device, heartbeat_timeout_s) == "online"
        changes = _changes(device, spec)
        what = f"would change its {' and '.join(changes)}" if changes else "would take it over"
        state = "is online: its agent is heartbeating" if live else "is offline but still owned by its agent"
        raise NotTheOwner(
            f"device {spec.name!r} {state}, and this registration {what} without the device's agent token "
            f"(header {AGENT_TOKEN_HEADER}, issued at its first registration and kept by its agent); "
            + _retire_hint(spec.name))
    if issued is not None:
        device.agent_token_hash = hash_token(issued)
    device.kind = spec.kind
    device.description = spec.description
    device.info = dict(spec.info)
    device.agent_version = spec.agent_version
    by_name = {r.name: r for r in device.runtimes}
    device.runtimes = [by_name.get(n) or DeviceRuntime(name=n) for n in spec.runtimes]
    for runtime in device.runtimes:
        runtime.version = spec.runtimes[runtime.name]
    device.last_heartbeat_at = utcnow()  # registration counts as a first heartbeat
    session.flush()
    return Registered(device=device, created=created, agent_token=issued)


def _changes(device: Device, spec: RegistrationSpec) -> list[str]:
    changes = []
    if device.kind != spec.kind:
        changes.append(f"kind ({device.kind} -> {spec.kind})")
    if sorted(r.name for r in device.runtimes) != sorted(spec.runtimes):
        before = ", ".join(r.name for r in device.runtimes)
        changes.append(f"runtimes ({before} -> {', '.join(spec.runtimes)})")
    return changes


def check_heartbeat(device: Device, agent_token: str | None) -> None:
    """Raises NotTheOwner unless the caller holds the device's agent token."""
    if holds_token(device, agent_token):
        return
    if device.agent_token_hash is None:
        raise NotTheOwner(f"device {device.name!r} has no agent token yet; register it again "
                          "(POST /api/v1/devices) to receive one, then send it in the "
                          f"{AGENT_TOKEN_HEADER} header")
    given = "a wrong" if agent_token else "no"
    raise NotTheOwner(f"heartbeat of device {device.name!r} with {given} agent token; send the token its "
                      f"first registration returned in the {AGENT_TOKEN_HEADER} header, or "
                      + _retire_hint(device.name))
