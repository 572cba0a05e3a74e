"""Where a webhook may be sent: public addresses only, unless allowed.

A job's ``webhook_url`` is chosen by whoever submits the job, and the server
POSTs to it: without a check, a submitter could make the server call its own
loopback services, the cloud metadata endpoint (169.254.169.254) or hosts of
the private network (server-side request forgery). The host is resolved and
every address it resolves to is checked, so a name pointing at 127.0.0.1
is refused like the literal. Redirects are never followed (``webhooks._post``).

The check runs at submission and again right before each delivery, and the
delivery then connects to exactly the addresses that were checked
(`resolve_target` returns them; ``webhooks._post`` pins the connection to
them, keeping the Host header and, for https, the SNI name and the
certificate check on the URL's host name). A DNS server that answers a
public address to the check and 127.0.0.1 to a second lookup (DNS
rebinding, TTL 0) therefore gets no second lookup to answer.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

ALLOW_SETTING = "AUTOML_WEBHOOK_ALLOW_PRIVATE"

Resolver = Callable[..., list[tuple[Any, ...]]]


class ForbiddenTarget(ValueError):
    """The URL's host is (or resolves to) a loopback, link-local, private or otherwise non-public address."""


class UnresolvableTarget(ValueError):
    """The URL's host does not resolve (now)."""


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _unmapped(address: IpAddress) -> IpAddress:
    """::ffff:127.0.0.1 is 127.0.0.1."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_public(address: IpAddress) -> bool:
    address = _unmapped(address)
    # is_global excludes loopback, link-local, RFC 1918, CGNAT (100.64/10), unique-local, documentation and
    # reserved ranges; multicast is not a receiver either.
    return address.is_global and not address.is_multicast


def _kind(address: IpAddress) -> str:
    address = _unmapped(address)
    for name in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(address, f"is_{name}"):
            return name.replace("_", "-")
    return "non-public"


def addresses_of(host: str, port: int, resolve: Resolver | None = None) -> list[IpAddress]:
    """Every address ``host`` stands for (itself when it is an IP literal);
    ``resolve`` defaults to ``socket.getaddrinfo`` (looked up at the call)."""
    resolve = resolve or socket.getaddrinfo
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableTarget(f"webhook host {host!r} does not resolve ({exc})") from None
    # In the resolver's order (its preference), each once. The scope of a link-local IPv6
    # address (fe80::1%eth0) is not part of the address.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def resolve_target(url: str, *, allow_private: bool,
                   resolve: Resolver | None = None) -> list[IpAddress]:
    """The addresses of ``url``'s host, resolved once: what a delivery must connect
    to (and nothing else). Raises ForbiddenTarget unless every one is public (or
    ``allow_private``); UnresolvableTarget when the host does not resolve."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = addresses_of(host, port, resolve)
    if not addresses:
        raise UnresolvableTarget(f"webhook host {host!r} resolves to no address")
    for address in addresses:
        if not allow_private and not _is_public(address):
            raise ForbiddenTarget(
                f"webhook URL {url!r} points at {address} ({_kind(address)} address); webhooks go to public "
                f"addresses only, unless the server sets {ALLOW_SETTING}=1 (e.g. for a receiver on this machine)")
    return addresses


def check_target(url: str, *, allow_private: bool, resolve: Resolver | None = None) -> None:
    """Raise ForbiddenTarget unless every address of ``url``'s host is public
    (or ``allow_private``, which skips the lookup); UnresolvableTarget when the
    host does not resolve."""
    if not allow_private:
        resolve_target(url, allow_private=False, resolve=resolve)
