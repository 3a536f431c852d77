"""A peer whose connection will not close must not hold up a DELETE or stay in the table.

The peer connection here is a stand-in (named so): the hang it imitates is aiortc#283,
``RTCPeerConnection.close()`` that sometimes never completes, which no real connection on
this machine reproduces on demand.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from edge_server.config import WebRtcConfig
from edge_server.webrtc import gateway as gateway_module
from edge_server.webrtc import peers as peers_module
from edge_server.webrtc.gateway import WebRtcGateway
from edge_server.webrtc.peers import _Peer


class HangingPeerConnectionStandIn:
    """Just what ``_Peer`` calls on a peer connection; ``close()`` never returns."""

    connectionState = "connected"

    def __init__(self) -> None:
        self.close_started = False

    def on(self, _event: str, _handler: Any) -> None:
        pass

    async def close(self) -> None:
        self.close_started = True
        await asyncio.Event().wait()


def _peer(closed: list[_Peer]) -> tuple[_Peer, HangingPeerConnectionStandIn]:
    pc = HangingPeerConnectionStandIn()
    peer = _Peer("res123456", "ses_x", pc, "etag", (None, None), None, 30.0, closed.append)  # type: ignore[arg-type]
    peer.protocol = "whep"
    return peer, pc


async def test_a_hanging_close_is_dropped_after_the_bound(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(peers_module, "PC_CLOSE_TIMEOUT_S", 0.2)
    closed: list[_Peer] = []
    peer, pc = _peer(closed)
    started = time.monotonic()
    peer.close("test")
    await asyncio.wait_for(peer.wait_closed(), 5.0)
    assert pc.close_started and closed == [peer] and peer.closed
    assert time.monotonic() - started < 2.0
    assert "did not close within" in caplog.text


async def test_delete_answers_while_the_peer_is_still_closing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers_module, "PC_CLOSE_TIMEOUT_S", 30.0)  # the close outlasts the DELETE
    monkeypatch.setattr(gateway_module, "DELETE_WAIT_S", 0.2)
    gw = WebRtcGateway(None, None, WebRtcConfig(), None, None)  # type: ignore[arg-type]  # delete() needs only the table
    closed: list[_Peer] = []
    peer, _ = _peer(closed)
    gw._peers[peer.resource_id] = peer
    started = time.monotonic()
    assert await asyncio.wait_for(gw.delete("whep", "ses_x", peer.resource_id), 5.0) is True
    assert time.monotonic() - started < 2.0
    assert peer.closed and closed == []  # still closing in its own task
    assert await gw.delete("whep", "ses_x", peer.resource_id) is False  # gone for the client already
    peer._closing.cancel()  # type: ignore[union-attr]
