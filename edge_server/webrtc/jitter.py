"""WHIP video frames handed on when their last packet is in, not when the next frame starts.

aiortc's video jitter buffer knows a frame is complete only when the first packet of the
next frame (a new RTP timestamp) arrives, so every WHIP frame waited one frame interval in
the node before it was decoded: 33 ms at 30 fps, measured as WHIP ingest being that much
slower than RTMP into the same node (``docs/benchmarks.md``, glass to glass). A video
sender marks the last packet of each frame (the RTP marker bit: RFC 6184 for H.264, RFC
7741 for VP8), so the frame can leave as soon as that packet, and every packet before it,
is in. Anything else is aiortc's own rule: a frame with a packet missing waits as before,
and a packet of the next frame still completes the one before it.

Pure logic over aiortc's ``JitterBuffer`` (packets in, frames out); ``use_on_receiver``
puts it into one receiver.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

log = logging.getLogger(__name__)

VIDEO_CAPACITY = 512  # packets, as aiortc's video receiver makes its buffer


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video ``JitterBuffer``, also completing a frame on its marker packet."""

    def __init__(self, capacity: int = VIDEO_CAPACITY) -> None:
        super().__init__(capacity, prefetch=0, is_video=True)

    def _remove_frame(self, sequence_number: int) -> Optional[JitterFrame]:
        packets: list[RtpPacket] = []
        timestamp = None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None:
                return None  # a gap: the first frame is not all in yet
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:
                return self._take(packets, timestamp, count)  # the next frame began (aiortc's rule)
            packets.append(packet)
            if packet.marker:
                return self._take(packets, timestamp, count + 1)  # its last packet is in
        return None

    def _take(self, packets: list[RtpPacket], timestamp: int, count: int) -> JitterFrame:
        frame = JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)  # type: ignore[attr-defined]
        self.remove(count)
        return frame


def use_on_receiver(receiver: Any) -> bool:
    """Give a video ``RTCRtpReceiver`` a ``MarkerJitterBuffer`` before its first packet.
    aiortc has no option for it; the buffer is the receiver's private attribute, so where
    an aiortc version has none by that name the receiver is left as it is (and False)."""
    name = "_RTCRtpReceiver__jitter_buffer"
    current = getattr(receiver, name, None)
    if not isinstance(current, JitterBuffer):
        log.warning("this aiortc's receiver has no jitter buffer where expected: WHIP frames wait for the next one")
        return False
    setattr(receiver, name, MarkerJitterBuffer(current.capacity))
    return True


__all__ = ["MarkerJitterBuffer", "use_on_receiver"]
