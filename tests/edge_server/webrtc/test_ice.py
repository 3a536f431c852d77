"""ICE settings: no third-party STUN unless configured, which local addresses are offered,
ICE servers as RFC 9725 Link headers."""

from __future__ import annotations

import aioice.ice

from edge_server.webrtc import ice


def test_no_ice_server_unless_configured() -> None:
    assert ice.rtc_configuration([]).iceServers == []  # aiortc's own default would be Google's STUN
    servers = ice.rtc_configuration(["stun:stun.example.com:3478", "turn:turn.example.com:3478"], "user", "pass").iceServers
    assert [s.urls for s in servers] == ["stun:stun.example.com:3478", "turn:turn.example.com:3478"]
    assert servers[0].username is None and (servers[1].username, servers[1].credential) == ("user", "pass")


def test_link_headers_carry_credentials_only_for_turn() -> None:
    links = ice.link_headers(["stun:stun.example.com:3478", "turns:turn.example.com:443"], "user", "pass")
    assert links[0] == '<stun:stun.example.com:3478>; rel="ice-server"'
    assert links[1] == '<turns:turn.example.com:443>; rel="ice-server"; username="user"; credential="pass"; credential-type="password"'


def test_host_policy_applies_only_inside_its_block(monkeypatch) -> None:
    monkeypatch.setattr(ice, "_original_get_host_addresses", lambda use_ipv4, use_ipv6: ["192.0.2.2", "fd00::2"])
    ice.install()
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["192.0.2.2", "fd00::2"]
    with ice.host_policy(ice.HostPolicy(allow_loopback=True)):
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["192.0.2.2", "fd00::2", "127.0.0.1"]
    with ice.host_policy(ice.HostPolicy(addresses=("192.0.2.2",))):
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["192.0.2.2"]
    with ice.host_policy(ice.HostPolicy(addresses=("127.0.0.1",))):
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1"]
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["192.0.2.2", "fd00::2"]
