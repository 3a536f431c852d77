"""ViewerHub without aiortc: fan-out of the same packets, keyframe requests, audio held for
its video, timestamps that keep rising across publishes; StreamTimeline's anchoring."""

from __future__ import annotations

import asyncio
import time

import av

from edge_server.media.codecs import EncodedVideo
from edge_server.webrtc.audio import OpusPacket
from edge_server.webrtc.hub import AUDIO_HOLD_S, ViewerHub
from edge_server.webrtc.peers import StreamTimeline


class FakeViewer:
    def __init__(self) -> None:
        self.video: list[tuple[av.Packet, bool]] = []
        self.audio: list[av.Packet] = []
        self.closed: str | None = None

    def deliver_video(self, packet: av.Packet, keyframe: bool) -> None:
        self.video.append((packet, keyframe))

    def deliver_audio(self, packet: av.Packet) -> None:
        self.audio.append(packet)

    def close(self, reason: str) -> None:
        self.closed = reason


def video(pts: int, key: bool = False) -> EncodedVideo:
    return EncodedVideo(pts, pts, f"frame{pts}".encode(), key)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_active_viewers_share_each_packet_object_and_joining_asks_for_a_keyframe() -> None:
    counts: list[int] = []
    hub = ViewerHub("ses_x", asyncio.get_running_loop(), on_count=counts.append)
    requests: list[float] = []
    hub.bind(lambda: requests.append(time.monotonic()))
    a, b, idle = FakeViewer(), FakeViewer(), FakeViewer()
    for viewer in (a, b, idle):
        hub.add(viewer)
    assert counts == [1, 2, 3] and not hub.active
    hub.send_video(video(0, True))  # nobody active yet: not even scheduled
    await settle()
    assert hub.video_packets == 0
    hub.activate(a)
    hub.activate(b)
    assert len(requests) == 2  # the runtime coalesces these into one keyframe
    for pts in (33, 66):
        hub.send_video(video(pts, pts == 33))
    await settle()
    assert [p.pts for p, _ in a.video] == [33, 66] and [k for _, k in a.video] == [True, False]
    assert all(pa is pb for (pa, _), (pb, _) in zip(a.video, b.video))  # the very same av.Packet
    assert idle.video == []
    hub.remove(a)
    hub.close_all("ended")
    assert b.closed == "ended" and idle.closed == "ended" and counts[-1] == 2


async def test_audio_waits_for_its_video_then_goes_out_with_it() -> None:
    hub = ViewerHub("ses_x", asyncio.get_running_loop())
    hub.bind(lambda: None)
    viewer = FakeViewer()
    hub.add(viewer)
    hub.activate(viewer)
    await settle()
    hub.send_video(video(1000, True))
    await settle()
    for ms in (1000, 1020, 1040, 1060):
        hub.send_audio(OpusPacket(ms * 48, b"opus"))
    await settle()
    assert [p.pts // 48 for p in viewer.audio] == [1000]  # the rest is ahead of the last picture
    hub.send_video(video(1033))
    await settle()
    assert [p.pts // 48 for p in viewer.audio] == [1000, 1020]
    await asyncio.sleep(AUDIO_HOLD_S + 0.05)
    hub.send_audio(OpusPacket(1080 * 48, b"opus"))  # video stalled: held audio goes anyway
    await settle()
    assert [p.pts // 48 for p in viewer.audio][:4] == [1000, 1020, 1040, 1060]


async def test_timestamps_keep_rising_when_the_publisher_reconnects() -> None:
    hub = ViewerHub("ses_x", asyncio.get_running_loop())
    viewer = FakeViewer()
    hub.add(viewer)
    hub.bind(lambda: None)
    hub.activate(viewer)
    await settle()
    for pts in (5000, 5033):
        hub.send_video(video(pts, pts == 5000))
    await settle()
    first = lambda: None  # noqa: E731 - a second publish binds another runtime
    hub.bind(first)
    await settle()
    for pts in (0, 33):  # the new publish starts its clock again
        hub.send_video(video(pts, pts == 0))
    hub.send_audio(OpusPacket(10 * 48, b"opus"))
    await settle()
    seen = [p.pts for p, _ in viewer.video]
    assert seen == sorted(seen) and seen[2] > seen[1] and seen[3] - seen[2] == 33
    assert viewer.audio and viewer.audio[-1].pts // 48 > seen[1]
    hub.unbind(lambda: None)  # not the bound one: ignored
    hub.request_keyframe()


def test_stream_timeline_anchors_each_stream_at_its_first_rtp_packet() -> None:
    timeline = StreamTimeline(start=100.0)
    timeline.first_packet("video", 100.5)
    timeline.first_packet("audio", 100.52)
    timeline.first_packet("video", 101.0)  # only the first counts
    # frames leave the jitter buffers and decoders later, and by different amounts
    assert round(timeline.ms("video", 0, 90000, arrival=100.55), 6) == 500.0
    assert round(timeline.ms("audio", 0, 48000, arrival=100.62), 6) == 520.0
    assert round(timeline.ms("video", 90000, 90000, arrival=999.0), 6) == 1500.0
    assert round(timeline.ms("audio", 4800, 48000, arrival=999.0), 6) == 620.0
    untapped = StreamTimeline(start=0.0)
    assert round(untapped.ms("video", 9000, 90000, arrival=2.0)) == 2000  # falls back to the frame's arrival
    assert round(untapped.ms("video", 18000, 90000, arrival=5.0)) == 2100
