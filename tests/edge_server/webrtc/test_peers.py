"""A peer whose connection will not close must not hold up a DELETE or stay in the table,
and a WHIP publisher's teardown must end its frame pump even while frames keep coming.

The peer connections, track and runtime here are stand-ins (named so): the hang imitated is
aiortc#283, ``RTCPeerConnection.close()`` that sometimes never completes, which no real
connection on this machine reproduces on demand; the pump test needs a track that delivers
frames back to back, which a real browser does only sometimes at the moment of a DELETE.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import av
import numpy as np
import pytest

from edge_server.config import WebRtcConfig
from edge_server.webrtc import gateway as gateway_module
from edge_server.webrtc import peers as peers_module
from edge_server.webrtc.gateway import WebRtcGateway
from edge_server.webrtc.peers import WhipPublisher, _Peer


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


class ClosingPeerConnectionStandIn(HangingPeerConnectionStandIn):
    async def close(self) -> None:
        self.close_started = True


class BusyVideoTrackStandIn:
    """A remote video track with a frame always ready: recv() completes on the next loop turn."""

    kind = "video"

    def __init__(self) -> None:
        self.frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(0)
        return self.frame


class RuntimeStandIn:
    def __init__(self) -> None:
        self.frames = 0

    def on_frame(self, frame: av.VideoFrame, ms: int, ingest_time: float) -> None:
        self.frames += 1


async def test_a_whip_teardown_ends_the_pump_while_frames_keep_arriving() -> None:
    """Python 3.11's asyncio.wait_for loses a cancel that lands as a frame arrives (gh-86296);
    a pump built on it went on for as long as the browser kept sending (most of these 20 did)."""
    for attempt in range(20):
        gone: list[str] = []

        async def publisher_gone(session_id: str, runtime: Any) -> None:
            gone.append(session_id)

        closed: list[_Peer] = []
        peer = WhipPublisher("res123456", "ses_x", ClosingPeerConnectionStandIn(), "etag", (None, None), None, 30.0,
                             closed.append, idle_timeout_s=30.0, publisher_gone=publisher_gone)  # type: ignore[arg-type]
        runtime = RuntimeStandIn()
        peer.attach(runtime, [("video", BusyVideoTrackStandIn())])  # type: ignore[arg-type, list-item]
        await asyncio.sleep(0.005 + 0.0005 * attempt)  # a different point in the pump's cycle each time
        assert runtime.frames > 0
        peer.close("DELETE")
        await asyncio.wait_for(peer.wait_closed(), 2.0)
        assert gone == ["ses_x"] and closed == [peer], attempt
        frames = runtime.frames
        await asyncio.sleep(0.01)
        assert runtime.frames == frames, "frames still pumped into the runtime after the teardown"
