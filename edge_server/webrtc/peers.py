"""The two kinds of peer connection the node holds: a WHIP publisher and a WHEP viewer.

Both are thin: aiortc does ICE/DTLS/SRTP and RTP; the publisher hands aiortc's decoded
frames to the session's runtime, the viewer takes the session's encoded packets from its
ViewerHub. Neither decodes or encodes anything itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import av
from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from edge_server.runtime import SessionRuntime
from edge_server.webrtc import jitter
from edge_server.webrtc.hub import ViewerHub
from edge_server.webrtc.tracks import EncodedAudioTrack, EncodedVideoTrack

PC_CLOSE_TIMEOUT_S = 5.0  # the longest a peer connection's close may take before the peer is dropped

log = logging.getLogger(__name__)


class StreamTimeline:
    """Puts a WHIP publisher's streams on the session's millisecond timeline.

    aiortc gives each decoded frame a pts counted from that stream's first RTP timestamp
    (90 kHz video, 48 kHz Opus), and audio and video start from unrelated origins. Each
    stream is anchored at the moment its first RTP packet reached the node (before any
    jitter buffer or decoder delay, which differ between audio and video), so that a sound
    and a picture the publisher sent together get the same milliseconds. pts then
    advances with the publisher's own clock, so sync holds for the whole publish.
    """

    def __init__(self, start: float) -> None:
        self.start = start  # monotonic seconds at which the session's timeline is 0 ms
        self._first_packet: dict[str, float] = {}
        self._anchor_ms: dict[str, float] = {}

    def first_packet(self, kind: str, arrival: float) -> None:
        self._first_packet.setdefault(kind, arrival)

    def ms(self, kind: str, pts: int, clock_rate: int, arrival: float) -> float:
        """Milliseconds for a frame of `kind` with `pts` (in 1/clock_rate) that reached us at `arrival`."""
        offset_ms = pts * 1000 / clock_rate
        anchor = self._anchor_ms.get(kind)
        if anchor is None:
            first = self._first_packet.get(kind)
            # without the RTP tap, fall back to this frame's arrival (a few ms of decoder delay)
            anchor = (first - self.start) * 1000 if first is not None else (arrival - self.start) * 1000 - offset_ms
            self._anchor_ms[kind] = anchor
        return anchor + offset_ms


def tap_first_rtp_packet(receiver: RTCRtpReceiver, on_first: Callable[[float], None]) -> None:
    """Note when the receiver's first RTP packet arrives (then get out of the way).

    aiortc offers no hook for this; the DTLS transport calls `receiver._handle_rtp_packet`
    for every packet, so the instance's method is wrapped once and restored on the first call."""
    original = getattr(receiver, "_handle_rtp_packet", None)
    if original is None:
        return

    async def tapped(packet: Any, arrival_time_ms: int) -> None:
        receiver._handle_rtp_packet = original  # type: ignore[method-assign]
        on_first(time.monotonic())
        await original(packet, arrival_time_ms=arrival_time_ms)

    receiver._handle_rtp_packet = tapped  # type: ignore[method-assign]


class _Peer:
    """What both kinds share: a resource id, an ETag, a connect deadline and one orderly close."""

    protocol = ""

    def __init__(self, resource_id: str, session_id: str, pc: RTCPeerConnection, etag: str,
                 remote_ice: tuple[str | None, str | None], primary_mid: str | None, connect_timeout_s: float,
                 on_closed: Callable[["_Peer"], None]) -> None:
        self.resource_id = resource_id
        self.session_id = session_id
        self.pc = pc
        self.etag = etag
        self.remote_ufrag, self.remote_pwd = remote_ice
        self.primary_mid = primary_mid
        self.connect_timeout_s = connect_timeout_s
        self.connected = asyncio.Event()
        self.closed = False
        self._on_closed = on_closed
        self._closing: asyncio.Task | None = None
        self._timer = asyncio.get_running_loop().call_later(connect_timeout_s, self._connect_deadline)
        pc.on("connectionstatechange", self._on_state)

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self.connected.set()
            self._timer.cancel()
            self.on_connected()
        elif state in ("failed", "closed"):
            self.close(f"connection {state}")

    def _connect_deadline(self) -> None:
        if not self.connected.is_set():
            self.close("did not connect in time")

    def on_connected(self) -> None:
        pass

    def close(self, reason: str) -> None:
        """Idempotent; the peer and whatever it fed are torn down in a task."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close(reason))

    async def wait_closed(self) -> None:
        if self._closing is not None:
            await asyncio.shield(self._closing)

    async def _close(self, reason: str) -> None:
        self.closed = True
        self._timer.cancel()
        log.info("%s %s of session %s closing: %s", self.protocol.upper(), self.resource_id[:6], self.session_id, reason)
        try:
            await self._teardown()
        finally:
            try:
                # bounded: aiortc's close can stall on a transport that never finishes
                # (aiortc#283); the resource is gone for the client either way
                await asyncio.wait_for(self.pc.close(), PC_CLOSE_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.warning("%s %s of session %s: the peer connection did not close within %.0f s; dropped",
                            self.protocol.upper(), self.resource_id[:6], self.session_id, PC_CLOSE_TIMEOUT_S)
            except Exception:  # aiortc may complain about a half-built connection; it is gone either way
                log.debug("closing a peer connection failed", exc_info=True)
            self._on_closed(self)

    async def _teardown(self) -> None:
        pass


class WhipPublisher(_Peer):
    """A WHIP publish: aiortc's decoded frames -> the session's runtime (same slot as RTMP)."""

    protocol = "whip"

    def __init__(
        self, *args: Any, idle_timeout_s: float, publisher_gone: Callable[[str, SessionRuntime], Any],
        frame_on_marker: bool = True, **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.frame_on_marker = frame_on_marker
        self.runtime: SessionRuntime | None = None
        self.timeline = StreamTimeline(time.monotonic())
        self._idle_timeout_s = idle_timeout_s
        self._publisher_gone = publisher_gone
        self._tasks: list[asyncio.Task] = []
        self.frames_received = 0

    def prepare(self) -> list[tuple[str, MediaStreamTrack]]:
        """After setRemoteDescription: tap each receiver, return the (kind, track) pairs to read."""
        tracks = []
        for transceiver in self.pc.getTransceivers():
            track = transceiver.receiver.track
            if track is None or transceiver.kind not in ("audio", "video"):
                continue
            if any(kind == transceiver.kind for kind, _ in tracks):
                continue  # one stream of each kind
            tap_first_rtp_packet(transceiver.receiver, lambda t, k=transceiver.kind: self.timeline.first_packet(k, t))
            if transceiver.kind == "video" and self.frame_on_marker:
                jitter.use_on_receiver(transceiver.receiver)  # a frame leaves on its last packet
            tracks.append((transceiver.kind, track))
        return tracks

    def attach(self, runtime: SessionRuntime, tracks: list[tuple[str, MediaStreamTrack]]) -> None:
        self.runtime = runtime
        loop = asyncio.get_running_loop()
        for kind, track in tracks:
            if kind == "audio":
                runtime.configure_audio(48000, 2)
                self._tasks.append(loop.create_task(self._pump_audio(track)))
            else:
                self._tasks.append(loop.create_task(self._pump_video(track)))

    async def _pump_video(self, track: MediaStreamTrack) -> None:
        assert self.runtime is not None
        timeout = self.connect_timeout_s + self._idle_timeout_s  # the first frame waits for ICE/DTLS too
        while not self.closed:
            try:
                # not asyncio.wait_for: on Python 3.11 it swallows a cancel that lands just as a
                # frame arrives (cpython gh-86296), and the teardown then waits on a pump that
                # goes on feeding the runtime for as long as the publisher keeps sending
                async with asyncio.timeout(timeout):
                    frame = await track.recv()
            except TimeoutError:
                self.close(f"no video for {timeout:.0f} s")
                return
            except MediaStreamError:
                self.close("video track ended")
                return
            timeout = self._idle_timeout_s
            now = time.monotonic()
            assert isinstance(frame, av.VideoFrame)
            ms = self.timeline.ms("video", int(frame.pts or 0), 90000, now)
            self.frames_received += 1
            self.runtime.on_frame(frame, max(0, round(ms)), now)

    async def _pump_audio(self, track: MediaStreamTrack) -> None:
        assert self.runtime is not None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame)
            rate = frame.sample_rate or 48000
            ms = self.timeline.ms("audio", int(frame.pts or 0), rate, time.monotonic())
            if ms >= 0:
                self.runtime.on_audio_frame(frame, ms)

    async def _teardown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self.runtime is not None:
            await self._publisher_gone(self.session_id, self.runtime)


class WhepViewer(_Peer):
    """A WHEP viewer: the session's packets, as they are (see tracks.py and hub.py)."""

    protocol = "whep"

    def __init__(self, *args: Any, hub: ViewerHub, video: EncodedVideoTrack, audio: EncodedAudioTrack | None,
                 viewer_left: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hub = hub
        self.video = video
        self.audio = audio
        self._viewer_left = viewer_left

    # ViewerSink
    def deliver_video(self, packet: av.Packet, keyframe: bool) -> None:
        self.video.offer(packet, keyframe)

    def deliver_audio(self, packet: av.Packet) -> None:
        if self.audio is not None:
            self.audio.offer(packet)

    def on_connected(self) -> None:
        self.hub.activate(self)  # and ask the encoder for a keyframe to start from

    async def _teardown(self) -> None:
        self.hub.remove(self)
        self.video.stop()
        if self.audio is not None:
            self.audio.stop()
        self._viewer_left(self.session_id)
