"""Audio between the two worlds, PyAV only: Opus for WebRTC, AAC for RTMP.

- RTMP in, WHEP out: AAC access units -> decode -> 48 kHz stereo -> Opus (AacToOpus).
- WHIP in, RTMP out: decoded audio frames (aiortc decodes Opus) -> AAC (PcmToAac).
- WHIP in, WHEP out: decoded audio frames -> Opus (PcmToOpus).
Each runs once per session, on the session's audio thread, never per viewer.

Timestamps are the session's milliseconds; every encoder keeps them (PyAV carries pts
through the resampler and subtracts the encoder's priming delay), and output never goes
backwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av

OPUS_RATE = 48000
OPUS_FRAME = 960  # 20 ms
OPUS_TIME_BASE = Fraction(1, OPUS_RATE)


@dataclass
class OpusPacket:
    pts: int  # in 1/48000 s, on the session's timeline
    data: bytes

    @property
    def ms(self) -> int:
        return self.pts * 1000 // OPUS_RATE


@dataclass
class AacPacket:
    pts_ms: int
    data: bytes


class _Monotonic:
    """Drops output that would not move forward (a publisher's timestamps may repeat after a gap)."""

    def __init__(self) -> None:
        self.last: int | None = None

    def admit(self, pts: int) -> bool:
        if self.last is not None and pts <= self.last:
            return False
        self.last = pts
        return True


REANCHOR_MS = 40  # input further than this from where the samples so far lead is a real gap


class _SampleClock:
    """Stamps frames by counting samples, so that output packets are evenly spaced even when
    the input's timestamps are whole milliseconds (FLV) or jitter; it follows the input again
    only across a real gap or jump."""

    def __init__(self) -> None:
        self._rate = 0
        self._next: int | None = None  # pts of the next sample, in 1/rate

    def stamp(self, frame: av.AudioFrame, ms: float) -> av.AudioFrame:
        rate = frame.sample_rate
        wanted = round(ms * rate / 1000)
        if self._next is None or rate != self._rate or abs(wanted - self._next) * 1000 > REANCHOR_MS * rate:
            self._next, self._rate = wanted, rate
        frame.time_base = Fraction(1, rate)
        frame.pts = self._next
        self._next += frame.samples
        return frame


class OpusEncoder:
    """Audio frames (any rate/layout/format) -> 20 ms Opus packets at 48 kHz stereo."""

    def __init__(self, bitrate: int = 96000) -> None:
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = OPUS_RATE
        ctx.layout = "stereo"
        ctx.format = "s16"
        ctx.bit_rate = bitrate
        ctx.time_base = OPUS_TIME_BASE
        ctx.options = {"application": "audio", "frame_duration": "20"}
        ctx.open()
        self._ctx = ctx
        self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=OPUS_RATE, frame_size=OPUS_FRAME)
        self._clock = _SampleClock()
        self._order = _Monotonic()

    def encode(self, frame: av.AudioFrame, ms: float) -> list[OpusPacket]:
        out = []
        for chunk in self._resampler.resample(self._clock.stamp(frame, ms)):
            for packet in self._ctx.encode(chunk):
                if packet.pts is not None and self._order.admit(int(packet.pts)):
                    out.append(OpusPacket(int(packet.pts), bytes(packet)))
        return out


class AacEncoder:
    """Audio frames -> AAC-LC access units (1024 samples) with an AudioSpecificConfig for the FLV header."""

    def __init__(self, sample_rate: int = 48000, channels: int = 2, bitrate: int = 128000) -> None:
        ctx = av.CodecContext.create("aac", "w")
        ctx.sample_rate = sample_rate
        ctx.layout = "stereo" if channels > 1 else "mono"
        ctx.format = "fltp"
        ctx.bit_rate = bitrate
        ctx.time_base = Fraction(1, sample_rate)
        ctx.flags |= av.codec.context.Flags.global_header  # AudioSpecificConfig in extradata
        ctx.open()
        self._ctx = ctx
        self.sample_rate = sample_rate
        self.channels = channels
        self._resampler = av.AudioResampler(format="fltp", layout=ctx.layout.name, rate=sample_rate, frame_size=ctx.frame_size or 1024)
        self._clock = _SampleClock()
        self._order = _Monotonic()

    @property
    def extradata(self) -> bytes:
        return bytes(self._ctx.extradata or b"")

    def encode(self, frame: av.AudioFrame, ms: float) -> list[AacPacket]:
        out = []
        for chunk in self._resampler.resample(self._clock.stamp(frame, ms)):
            for packet in self._ctx.encode(chunk):
                if packet.pts is None:
                    continue
                pts_ms = int(packet.pts) * 1000 // self.sample_rate
                if pts_ms >= 0 and self._order.admit(pts_ms):
                    out.append(AacPacket(pts_ms, bytes(packet)))
        return out


class AacDecoder:
    """AAC access units from RTMP (with the publisher's AudioSpecificConfig) -> audio frames."""

    def __init__(self, audio_specific_config: bytes) -> None:
        ctx = av.CodecContext.create("aac", "r")
        ctx.extradata = audio_specific_config
        ctx.open()
        self._ctx = ctx

    def decode(self, data: bytes) -> list[av.AudioFrame]:
        try:
            return list(self._ctx.decode(av.Packet(data)))
        except (av.FFmpegError, ValueError):
            return []  # a corrupt access unit costs its 21 ms of sound, nothing more


class AacToOpus:
    """RTMP's AAC -> Opus for WHEP viewers (one per session)."""

    def __init__(self, audio_specific_config: bytes, bitrate: int = 96000) -> None:
        self.config = audio_specific_config
        self._decoder = AacDecoder(audio_specific_config)
        self._encoder = OpusEncoder(bitrate)

    def feed(self, data: bytes, pts_ms: int) -> list[OpusPacket]:
        out = []
        for frame in self._decoder.decode(data):
            out += self._encoder.encode(frame, pts_ms)
            pts_ms += frame.samples * 1000 / frame.sample_rate
        return out
