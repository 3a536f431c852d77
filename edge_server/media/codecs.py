"""H.264 decode (from FLV's AVC config) and the one libx264 encoder per session, via PyAV."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from fractions import Fraction

import av

MS = Fraction(1, 1000)


@dataclass
class EncodedVideo:
    """One encoded access unit, shared by every egress of the session."""

    pts: int  # ms, follows the input's timestamps
    dts: int
    data: bytes
    is_keyframe: bool
    ingest_time: float = field(default=0.0, compare=False)  # monotonic, when its source reached us


class DecodeError(Exception):
    """A packet the decoder could not use; the caller skips and counts it."""


class H264Decoder:
    def __init__(self, avc_config: bytes) -> None:
        self._ctx = av.CodecContext.create("h264", "r")
        self._ctx.extradata = avc_config
        self._ctx.thread_type = "SLICE"  # frame threading would add a frame of latency per thread
        self._ctx.thread_count = 1
        self._ctx.open()

    def decode(self, data: bytes, pts: int, dts: int) -> list[av.VideoFrame]:
        packet = av.Packet(data)
        packet.pts, packet.dts, packet.time_base = pts, dts, MS
        try:
            frames = self._ctx.decode(packet)
        except (av.FFmpegError, ValueError) as exc:
            raise DecodeError(str(exc)) from None
        for frame in frames:
            if frame.pts is None:
                frame.pts = pts
            frame.time_base = MS
        return frames


@dataclass(frozen=True)
class EncoderSettings:
    width: int
    height: int
    fps: float
    bitrate_kbps: int
    gop_seconds: float = 2.0
    preset: str = "ultrafast"
    threads: int = 1


class H264Encoder:
    """libx264, zerolatency; frame rate is set explicitly (with a 1/1000 time base and no
    frame rate x264 assumes 1000 fps and starves the bitrate). Keyframes on request."""

    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height = settings.width, settings.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = MS
        ctx.framerate = Fraction(settings.fps).limit_denominator(1001)
        ctx.gop_size = max(1, round(settings.fps * settings.gop_seconds))
        ctx.bit_rate = settings.bitrate_kbps * 1000
        ctx.thread_count = settings.threads
        ctx.flags |= av.codec.context.Flags.global_header  # SPS/PPS in extradata for the FLV header
        kbps = settings.bitrate_kbps
        ctx.options = {
            "preset": settings.preset,
            "tune": "zerolatency",
            "x264-params": f"vbv-maxrate={kbps}:vbv-bufsize={kbps}:scenecut=0:repeat-headers=1",
        }
        ctx.open()
        self._ctx = ctx
        self._keyframe_requested = threading.Event()
        self._last_pts: int | None = None

    @property
    def extradata(self) -> bytes:
        return bytes(self._ctx.extradata or b"")

    def request_keyframe(self) -> None:
        """Thread-safe: the next encoded frame will be an IDR."""
        self._keyframe_requested.set()

    def encode(self, frame: av.VideoFrame, ingest_time: float = 0.0) -> list[EncodedVideo]:
        s = self.settings
        if frame.width != s.width or frame.height != s.height or frame.format.name != "yuv420p":
            frame = frame.reformat(width=s.width, height=s.height, format="yuv420p")
        pts = int(frame.pts)
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1  # x264 needs strictly rising pts; a publisher may repeat one
        self._last_pts = pts
        frame.pts, frame.time_base = pts, MS
        if self._keyframe_requested.is_set():
            self._keyframe_requested.clear()
            frame.pict_type = av.video.frame.PictureType.I
        else:
            frame.pict_type = av.video.frame.PictureType.NONE
        return [
            EncodedVideo(int(p.pts), int(p.dts if p.dts is not None else p.pts), bytes(p), p.is_keyframe, ingest_time)
            for p in self._ctx.encode(frame)
        ]
