"""ICE settings for the node's peer connections: servers, and which local addresses to offer.

aiortc falls back to a public Google STUN server when a configuration names no ICE
servers; the node passes an explicit (by default empty) list so that it never talks to a
third party unless configured to.

Which local addresses become host candidates is decided inside aioice
(`aioice.ice.get_host_addresses`, which always skips 127.0.0.1 and ::1) with no per-connection
option. `host_policy()` sets, for the task that gathers, a policy that a thin wrapper around
that function applies: keep only the configured addresses, and add loopback when allowed.
Peer connections gathering outside such a context (other code in the process) keep aioice's
behaviour.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from dataclasses import dataclass
from typing import Iterator

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer


@dataclass(frozen=True)
class HostPolicy:
    addresses: tuple[str, ...] = ()  # only these local addresses (empty: every interface but loopback)
    allow_loopback: bool = False  # add 127.0.0.1 (also added when listed in addresses)


_policy: contextvars.ContextVar[HostPolicy | None] = contextvars.ContextVar("hikariedge_ice_host_policy", default=None)
_original_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses = _original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    policy = _policy.get()
    if policy is None:
        return addresses
    if use_ipv4 and (policy.allow_loopback or "127.0.0.1" in policy.addresses) and "127.0.0.1" not in addresses:
        addresses.append("127.0.0.1")
    if policy.addresses:
        addresses = [a for a in addresses if a in policy.addresses]
    return addresses


def install() -> None:
    """Route aioice's host address lookup through the policy (idempotent)."""
    if aioice.ice.get_host_addresses is not _get_host_addresses:
        aioice.ice.get_host_addresses = _get_host_addresses


@contextlib.contextmanager
def host_policy(policy: HostPolicy) -> Iterator[None]:
    """Apply `policy` to the candidates gathered inside this block (e.g. around setLocalDescription)."""
    install()
    token = _policy.set(policy)
    try:
        yield
    finally:
        _policy.reset(token)


def ice_servers(urls: list[str], username: str | None = None, credential: str | None = None) -> list[RTCIceServer]:
    servers = []
    for url in urls:
        if url.startswith(("turn:", "turns:")):
            servers.append(RTCIceServer(urls=url, username=username, credential=credential))
        else:
            servers.append(RTCIceServer(urls=url))
    return servers


def rtc_configuration(urls: list[str], username: str | None = None, credential: str | None = None) -> RTCConfiguration:
    """Always an explicit list: an empty one means no STUN/TURN at all (aiortc's default is Google's STUN)."""
    return RTCConfiguration(iceServers=ice_servers(urls, username, credential))


def link_headers(urls: list[str], username: str | None = None, credential: str | None = None) -> list[str]:
    """RFC 9725 section 4.6: ICE servers as Link headers on the 201 (credentials only for TURN)."""
    links = []
    for url in urls:
        link = f'<{url}>; rel="ice-server"'
        if url.startswith(("turn:", "turns:")) and username is not None and credential is not None:
            link += f'; username="{username}"; credential="{credential}"; credential-type="password"'
        links.append(link)
    return links


def validate_address(address: str) -> str:
    ipaddress.ip_address(address)
    return address
