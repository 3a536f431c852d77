"""The packet tracks aiortc sends from, viewers' PLI/FIR reaching the one encoder, and the
runtime's rate-limited, coalesced keyframe requests."""

from __future__ import annotations

import av
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket

from edge_server import runtime as runtime_module
from edge_server.metrics import MediaMetrics
from edge_server.runtime import RuntimeSettings, SessionRuntime
from edge_server.webrtc.ice import rtc_configuration
from edge_server.webrtc.tracks import VIDEO_QUEUE_MAX, EncodedAudioTrack, EncodedVideoTrack, route_keyframe_requests
from pipeline.stage import IdentityProcessor


def packet(pts: int) -> av.Packet:
    out = av.Packet(b"\x00\x00\x00\x01\x65" + bytes([pts % 256]))
    out.pts = pts
    return out


async def test_video_track_starts_at_a_keyframe_and_skips_ahead_when_behind() -> None:
    requests: list[int] = []
    track = EncodedVideoTrack(lambda: requests.append(1))
    track.offer(packet(0), keyframe=False)  # joined mid-GOP: dropped
    key = packet(33)
    track.offer(key, keyframe=True)
    track.offer(packet(66), keyframe=False)
    assert await track.recv() is key  # the session's own packet object, not a copy
    assert (await track.recv()).pts == 66 and track.packets_skipped == 1
    for pts in range(100, 100 + VIDEO_QUEUE_MAX + 1):
        track.offer(packet(pts), keyframe=pts == 100)
    assert requests == [1], "a viewer that fell behind asks for a keyframe"
    track.offer(packet(9000), keyframe=False)
    track.offer(packet(9033), keyframe=True)
    assert (await track.recv()).pts == 9033
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_audio_track_keeps_the_newest_when_full() -> None:
    track = EncodedAudioTrack()
    for pts in range(200):
        track.offer(packet(pts))
    assert (await track.recv()).pts == 50
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_pli_and_fir_from_a_viewer_reach_the_session_encoder() -> None:
    pc = RTCPeerConnection(rtc_configuration([]))
    try:
        sender = pc.addTransceiver(EncodedVideoTrack(lambda: None), direction="sendonly").sender
        asked: list[str] = []
        route_keyframe_requests(sender, lambda: asked.append("keyframe"))
        for fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=fmt, ssrc=1234, media_ssrc=sender._ssrc))
        assert asked == ["keyframe", "keyframe"]
    finally:
        await pc.close()


def test_keyframe_requests_are_rate_limited_but_never_lost() -> None:
    runtime = SessionRuntime("ses_k", [], IdentityProcessor(), RuntimeSettings(), MediaMetrics())
    interval = runtime_module.KEYFRAME_REQUEST_INTERVAL_S
    now = 1000.0
    for _ in range(10):
        runtime.request_keyframe()  # ten viewers joining at once
    assert runtime._take_keyframe_request(now) is True
    assert runtime._take_keyframe_request(now) is False  # one keyframe for all ten
    runtime.request_keyframe()  # another viewer, just after
    assert runtime._take_keyframe_request(now + interval / 2) is False  # not yet...
    assert runtime._take_keyframe_request(now + interval) is True  # ...but not forgotten
    assert runtime._take_keyframe_request(now + 3 * interval) is False
