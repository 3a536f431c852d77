"""The WHIP video jitter buffer: a frame leaves on its marker packet, and nothing else changes.

Pure: RTP packets in, frames out, against aiortc's own ``JitterBuffer`` on the same packets.
"""

from __future__ import annotations

import random

from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from edge_server.webrtc.jitter import MarkerJitterBuffer, use_on_receiver


def _stream(frames: int, per_frame: int = 3, first_seq: int = 65530) -> list[RtpPacket]:
    """``frames`` video frames of ``per_frame`` packets each, marker on each frame's last;
    sequence numbers wrap past 65535."""
    packets = []
    for f in range(frames):
        for k in range(per_frame):
            p = RtpPacket(payload_type=96, marker=int(k == per_frame - 1), sequence_number=(first_seq + f * per_frame + k) % 65536,
                          timestamp=3000 * f)
            p._data = bytes([f, k])  # what the receiver's depayloader would leave
            packets.append(p)
    return packets


def _feed(buffer: JitterBuffer, packets: list[RtpPacket]) -> list[tuple[int, int, bytes]]:
    """(index of the packet that completed it, timestamp, data) per frame that left."""
    out = []
    for i, p in enumerate(packets):
        _, frame = buffer.add(p)
        if frame is not None:
            out.append((i, frame.timestamp, frame.data))
    return out


def test_a_frame_leaves_on_its_last_packet_not_on_the_next_frames_first():
    packets = _stream(5)
    ours, aiortc = _feed(MarkerJitterBuffer(), packets), _feed(JitterBuffer(512, is_video=True), packets)
    assert [(ts, data) for _, ts, data in ours] == [(3000 * f, bytes([f, 0, f, 1, f, 2])) for f in range(5)]
    assert [i for i, _, _ in ours] == [2, 5, 8, 11, 14], "on each frame's marker packet"
    assert [i for i, _, _ in aiortc] == [3, 6, 9, 12], "aiortc's: a packet later, and the last frame never"
    assert [(ts, d) for _, ts, d in aiortc] == [(ts, d) for _, ts, d in ours[:4]]


def test_a_frame_with_a_packet_missing_waits_for_it():
    packets = _stream(3)
    late = packets.pop(1)  # frame 0's middle packet comes after frame 0's marker
    buffer = MarkerJitterBuffer()
    assert _feed(buffer, packets[:2]) == []
    _, frame = buffer.add(late)
    assert frame is not None and frame.data == bytes([0, 0, 0, 1, 0, 2])


def test_reordered_and_duplicated_packets_give_aiortcs_frames_and_never_later():
    rng = random.Random(3)
    packets = _stream(40, per_frame=4)
    shuffled = packets[:]
    for i in range(0, len(shuffled) - 3, 3):  # local reordering, as on a real network
        window = shuffled[i : i + 3]
        rng.shuffle(window)
        shuffled[i : i + 3] = window
    shuffled.insert(50, packets[20])  # a retransmitted packet that arrives again, late
    ours = _feed(MarkerJitterBuffer(), shuffled)
    aiortc = _feed(JitterBuffer(512, is_video=True), shuffled)
    theirs = {ts: data for _, ts, data in aiortc}
    assert len(ours) >= len(aiortc)
    assert all(theirs.get(ts, data) == data for _, ts, data in ours), "the same bytes for every frame both emit"
    when = {ts: i for i, ts, _ in ours}
    assert all(when[ts] <= i for i, ts, _ in aiortc), "never later than aiortc"
    assert [ts for _, ts, _ in ours] == sorted(ts for _, ts, _ in ours), "in order"


def test_it_goes_into_a_receiver_in_place_of_aiortcs():
    from aiortc import RTCRtpReceiver
    from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
    from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport

    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    receiver = RTCRtpReceiver("video", transport)
    assert use_on_receiver(receiver)
    assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, MarkerJitterBuffer)
    assert not use_on_receiver(object()), "where aiortc keeps no buffer by that name, nothing is touched"
