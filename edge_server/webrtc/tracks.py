"""aiortc tracks that hand out already-encoded packets, so that no viewer costs an encoder.

aiortc's RTCRtpSender asks its track for the next item; a Frame is encoded (one encoder
per sender), anything else is taken as an av.Packet and only packetised (for H.264:
`aiortc.codecs.h264.H264Encoder.pack`, Annex B split into FU-A/STAP-A; for Opus: one
packet per RTP payload). These tracks return av.Packets made once per session by the
session's libx264 encoder and its one Opus encoder (edge_server/webrtc/hub.py).

The sender turns an incoming PLI/FIR into `_send_keyframe()`, which for packets would be
a no-op; `route_keyframe_requests` sends it to the session's encoder instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import av
from aiortc import MediaStreamTrack, RTCRtpSender
from aiortc.mediastreams import MediaStreamError

log = logging.getLogger(__name__)

VIDEO_QUEUE_MAX = 90  # ~3 s at 30 fps: a viewer further behind skips to the next keyframe
AUDIO_QUEUE_MAX = 150  # 3 s of 20 ms packets


class EncodedVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, request_keyframe: Callable[[], None]) -> None:
        super().__init__()
        self._queue: asyncio.Queue[av.Packet | None] = asyncio.Queue()
        self._request_keyframe = request_keyframe
        self._need_keyframe = True
        self.packets_sent = 0
        self.packets_skipped = 0

    def offer(self, packet: av.Packet, keyframe: bool) -> None:
        """Event loop only. Queue a packet of the session's stream for this viewer."""
        if self.readyState != "live":
            return
        if self._queue.qsize() >= VIDEO_QUEUE_MAX:
            self.packets_skipped += self._drain()
            self._need_keyframe = True
            self._request_keyframe()
        if self._need_keyframe:
            if not keyframe:
                self.packets_skipped += 1
                return
            self._need_keyframe = False
        self._queue.put_nowait(packet)

    def _drain(self) -> int:
        dropped = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            dropped += 1
        return dropped

    async def recv(self) -> av.Packet:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if packet is None:
            raise MediaStreamError
        self.packets_sent += 1
        return packet

    def stop(self) -> None:
        if self.readyState == "live":
            self._queue.put_nowait(None)
        super().stop()


class EncodedAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: asyncio.Queue[av.Packet | None] = asyncio.Queue()

    def offer(self, packet: av.Packet) -> None:
        if self.readyState != "live":
            return
        if self._queue.qsize() >= AUDIO_QUEUE_MAX:
            self._queue.get_nowait()
        self._queue.put_nowait(packet)

    async def recv(self) -> av.Packet:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if packet is None:
            raise MediaStreamError
        return packet

    def stop(self) -> None:
        if self.readyState == "live":
            self._queue.put_nowait(None)
        super().stop()


def route_keyframe_requests(sender: RTCRtpSender, request_keyframe: Callable[[], None]) -> None:
    """Make the viewer's PLI/FIR reach the session's one encoder (rate-limited there)."""
    sender._send_keyframe = request_keyframe  # type: ignore[method-assign]
