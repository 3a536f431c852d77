"""One session's WHEP viewers: the encoded packets of the session's one encoder, fanned out.

The runtime's threads call send_video/send_audio; the packets cross to the event loop once
(call_soon_threadsafe) and every active viewer gets the same av.Packet object, so N viewers
cost N RTP packetisations and no encoding at all.

- A viewer starts at a keyframe: joining asks the session's encoder for one (the runtime
  rate-limits and coalesces such requests) and drops what comes before it.
- A viewer's keyframe requests (RTCP PLI/FIR) go to the same place.
- The hub outlives one publish (OBS may reconnect): timestamps are rebased so that what a
  viewer gets keeps rising across publishes.
- Audio waits for the video it belongs to: an Opus packet is released once a video frame at
  or after its time has gone out (or after HOLD_S), so that both leave together and a
  viewer's A/V sync does not depend on how long the pipeline took.

No aiortc here: viewers are anything with the ViewerSink methods.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Callable, Protocol

import av

from edge_server.media.codecs import MS, EncodedVideo
from edge_server.webrtc.audio import OPUS_RATE, OPUS_TIME_BASE, OpusPacket

log = logging.getLogger(__name__)

AUDIO_HOLD_S = 0.3  # audio is never held longer than this waiting for its video
REBASE_GAP_MS = 100  # between the last packet of one publish and the first of the next


class ViewerSink(Protocol):
    def deliver_video(self, packet: av.Packet, keyframe: bool) -> None: ...
    def deliver_audio(self, packet: av.Packet) -> None: ...
    def close(self, reason: str) -> None: ...


class ViewerHub:
    def __init__(self, session_id: str, loop: asyncio.AbstractEventLoop, on_count: Callable[[int], None] = lambda n: None) -> None:
        self.session_id = session_id
        self._loop = loop
        self._on_count = on_count
        self._viewers: dict[int, ViewerSink] = {}  # id -> sink, only ever changed on the loop
        self._active: set[int] = set()
        self._request_keyframe: Callable[[], None] | None = None
        self._offset_ms = 0
        self._last_ms: int | None = None  # last timestamp handed out (rebased)
        self._rebase = False
        self._video_clock_ms: int | None = None
        self._pending_audio: deque[tuple[float, OpusPacket]] = deque()
        self.video_packets = 0  # packets fanned out (each to every active viewer)

    # -- the media plane side (any thread) ------------------------------------------

    @property
    def active(self) -> bool:
        """Whether anybody is watching (read without a lock: a stale answer costs one packet)."""
        return bool(self._active)

    def bind(self, request_keyframe: Callable[[], None]) -> None:
        """A publish started: keyframe requests go to its encoder from now on."""
        self._request_keyframe = request_keyframe
        self._post(lambda _: self._start_publish(), None)

    def unbind(self, request_keyframe: Callable[[], None]) -> None:
        """That publish ended (a later one may already have bound itself)."""
        if self._request_keyframe == request_keyframe:
            self._request_keyframe = None

    def send_video(self, packet: EncodedVideo) -> None:
        if self._active:
            self._post(self._deliver_video, packet)

    def send_audio(self, packet: OpusPacket) -> None:
        if self._active:
            self._post(self._deliver_audio, packet)

    def _post(self, deliver: Callable[..., None], packet: object) -> None:
        try:
            self._loop.call_soon_threadsafe(deliver, packet)
        except RuntimeError:  # the loop is gone (node shutting down): nobody to deliver to
            pass

    # -- viewers (event loop) -------------------------------------------------------------

    def add(self, viewer: ViewerSink) -> None:
        self._viewers[id(viewer)] = viewer
        self._on_count(len(self._viewers))

    def activate(self, viewer: ViewerSink) -> None:
        """The viewer's transport is up: start sending it packets from the next keyframe."""
        if id(viewer) in self._viewers:
            self._active.add(id(viewer))
            self.request_keyframe()

    def remove(self, viewer: ViewerSink) -> None:
        if self._viewers.pop(id(viewer), None) is not None:
            self._active.discard(id(viewer))
            self._on_count(len(self._viewers))

    def __len__(self) -> int:
        return len(self._viewers)

    def request_keyframe(self) -> None:
        request = self._request_keyframe
        if request is not None:
            request()

    def close_all(self, reason: str) -> None:
        for viewer in list(self._viewers.values()):
            viewer.close(reason)

    # -- delivery (event loop) ------------------------------------------------------------------

    def _start_publish(self) -> None:
        self._rebase = True
        self._video_clock_ms = None
        self._flush_audio()

    def _rebased(self, ms: int) -> int:
        if self._rebase:
            self._rebase = False
            if self._last_ms is not None:
                self._offset_ms = self._last_ms + REBASE_GAP_MS - ms
        return ms + self._offset_ms

    def _deliver_video(self, packet: EncodedVideo) -> None:
        pts = self._rebased(packet.pts)
        dts = pts - (packet.pts - packet.dts)
        self._last_ms = max(self._last_ms or pts, pts)
        out = av.Packet(packet.data)
        out.pts, out.dts, out.time_base = pts, dts, MS
        self.video_packets += 1
        for key in self._active:
            self._viewers[key].deliver_video(out, packet.is_keyframe)
        self._video_clock_ms = pts
        self._release_audio()

    def _deliver_audio(self, packet: OpusPacket) -> None:
        self._pending_audio.append((time.monotonic(), packet))
        self._release_audio()

    def _release_audio(self) -> None:
        deadline = time.monotonic() - AUDIO_HOLD_S
        while self._pending_audio:
            arrived, packet = self._pending_audio[0]
            ms = packet.pts * 1000 // OPUS_RATE
            if arrived > deadline and (self._video_clock_ms is None or ms + self._offset_ms > self._video_clock_ms):
                break
            self._pending_audio.popleft()
            self._send_audio(packet)

    def _flush_audio(self) -> None:
        while self._pending_audio:
            self._send_audio(self._pending_audio.popleft()[1])

    def _send_audio(self, packet: OpusPacket) -> None:
        pts = self._rebased(packet.pts * 1000 // OPUS_RATE) * (OPUS_RATE // 1000) + packet.pts % (OPUS_RATE // 1000)
        self._last_ms = max(self._last_ms or 0, pts * 1000 // OPUS_RATE)
        out = av.Packet(packet.data)
        out.pts, out.time_base = pts, OPUS_TIME_BASE
        for key in self._active:
            self._viewers[key].deliver_audio(out)

