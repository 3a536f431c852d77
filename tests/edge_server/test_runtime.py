"""SessionRuntime fed real FLV tags (demuxed from an ffmpeg-made clip), no sockets.

Targets are real: an in-process ffmpeg listener receives what the runtime pushes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from edge_server.metrics import MediaMetrics
from edge_server.runtime import RuntimeSettings, SessionRuntime
from pipeline.stage import IdentityProcessor
from signaling.models import Target
from tests.helpers import analyse_flv, start_receiver


def flv_tags(clip: Path) -> list[tuple[str, int, bytes]]:
    """(kind, timestamp ms, FLV tag body) for every packet, headers first, as an RTMP publisher sends."""
    container = av.open(str(clip))
    video, audio = container.streams.video[0], container.streams.audio[0]
    tags: list[tuple[str, int, bytes]] = [
        ("video", 0, bytes([0x17, 0, 0, 0, 0]) + bytes(video.codec_context.extradata)),
        ("audio", 0, bytes([0xAF, 0]) + bytes(audio.codec_context.extradata)),
    ]
    for packet in container.demux():
        if packet.dts is None:
            continue
        ms = int(packet.dts * packet.time_base * 1000)
        if packet.stream.type == "video":
            cts = int((packet.pts - packet.dts) * packet.time_base * 1000)
            head = bytes([0x17 if packet.is_keyframe else 0x27, 1]) + cts.to_bytes(3, "big", signed=True)
            tags.append(("video", ms, head + bytes(packet)))
        else:
            tags.append(("audio", ms, bytes([0xAF, 1]) + bytes(packet)))
    container.close()
    return tags


def feed(runtime: SessionRuntime, tags: list[tuple[str, int, bytes]], realtime: bool = True) -> None:
    start = time.monotonic()
    for kind, ms, body in tags:
        if realtime:
            delay = start + ms / 1000 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        (runtime.on_video if kind == "video" else runtime.on_audio)(ms, body)


class FailingProcessor(IdentityProcessor):
    def __init__(self) -> None:
        self.calls = 0

    def process(self, frame: av.VideoFrame) -> av.VideoFrame:
        self.calls += 1
        if self.calls % 2 == 0:
            raise RuntimeError("stage blew up")
        return frame


@pytest.mark.e2e
def test_corrupt_frames_are_skipped_and_counted_and_stream_goes_on(clip_small: Path, tmp_path: Path) -> None:
    tags = flv_tags(clip_small)
    # corrupt a few inter frames in the middle: garbage where the NAL units were
    corrupted = 0
    for i, (kind, ms, body) in enumerate(tags):
        if kind == "video" and 60 <= i < 200 and body[0] == 0x27 and corrupted < 3:
            tags[i] = (kind, ms, body[:5] + b"\x00\x00\x00\x05\x65\xff\xff\xff\xff")
            corrupted += 1
    tags.insert(100, ("video", tags[99][1], b"\x17\x09garbage"))  # not even a valid AVC packet type
    receiver = start_receiver(tmp_path / "out.flv")
    runtime = SessionRuntime("ses_t", [Target(receiver.url, "rx")], IdentityProcessor(), RuntimeSettings(), MediaMetrics())
    runtime.start()
    feed(runtime, tags)
    runtime.stop()
    assert receiver.wait(20) == 0
    sent_frames = sum(1 for kind, _, body in tags if kind == "video" and body[1] == 1)
    assert runtime.dropped["decode_error"] >= 1
    assert runtime.frames_out >= 0.9 * sent_frames
    received = analyse_flv(receiver.path)
    assert len(received.video_pts_ms) >= 0.9 * sent_frames


@pytest.mark.e2e
def test_processor_errors_withhold_the_frame(clip_small: Path, tmp_path: Path) -> None:
    tags = flv_tags(clip_small)[:120]
    processor = FailingProcessor()
    receiver = start_receiver(tmp_path / "out.flv")
    runtime = SessionRuntime("ses_f", [Target(receiver.url, "rx")], processor, RuntimeSettings(), MediaMetrics())
    runtime.start()
    feed(runtime, tags)
    runtime.stop()
    receiver.wait(20)
    assert runtime.dropped["process_error"] == processor.calls // 2
    assert runtime.frames_out == processor.calls - processor.calls // 2


def test_decode_backlog_skips_to_next_keyframe(clip_small: Path) -> None:
    """Flood the runtime far faster than real time with a processor that stalls: frames are
    dropped (slot or backlog), never queued without bound."""

    class Slow(IdentityProcessor):
        def process(self, frame: av.VideoFrame) -> av.VideoFrame:
            time.sleep(0.05)
            return frame

    runtime = SessionRuntime("ses_b", [], Slow(), RuntimeSettings(max_decode_backlog_s=0.2), MediaMetrics())
    runtime.start()
    tags = flv_tags(clip_small)
    feed(runtime, tags, realtime=False)
    runtime.stop(timeout=20)
    sent = sum(1 for kind, _, body in tags if kind == "video" and body[1] == 1)
    dropped = runtime.dropped["slot"] + runtime.dropped["backlog"]
    assert dropped > 0 and runtime.frames_out + dropped >= sent * 0.95
    assert runtime.frames_out < sent


class _Stamping(IdentityProcessor):
    """Records which frames it processed (by pts), in one shared log, and when it was closed."""

    def __init__(self, name: str, log: list[tuple[str, int]]) -> None:
        self.name, self.log, self.closed = name, log, threading.Event()

    def process(self, frame: av.VideoFrame) -> av.VideoFrame:
        assert not self.closed.is_set(), f"{self.name} processed a frame after it was closed"
        self.log.append((self.name, frame.pts))
        return frame

    def close(self) -> None:
        self.closed.set()


@pytest.mark.e2e
def test_a_face_switch_takes_effect_between_two_frames(clip_small: Path) -> None:
    """replace_processor from another thread (the API's): the old processor handles every
    frame up to the switch, the new one every frame after, none is skipped or done twice;
    a switch superseded before any frame came is closed unused; the last one is closed at stop."""
    processed: list[tuple[str, int]] = []
    old, unused, new = (_Stamping(n, processed) for n in ("old", "unused", "new"))
    runtime = SessionRuntime("ses_s", [], old, RuntimeSettings(), MediaMetrics())
    runtime.start()
    tags = flv_tags(clip_small)[:150]
    feed(runtime, tags[:70])
    assert runtime.replace_processor(unused) and runtime.replace_processor(new)
    assert unused.closed.wait(1.0) and ("unused", 0) not in processed
    feed(runtime, tags[70:])
    runtime.stop()
    names = [name for name, _ in processed]
    assert names and names[0] == "old" and names[-1] == "new" and "unused" not in names
    assert names == sorted(names, key=lambda n: n != "old"), "frames by the old and the new processor interleave"
    pts = [p for _, p in processed]
    assert len(set(pts)) == len(pts) and pts == sorted(pts), "a frame was processed twice or out of order"
    assert runtime.frames_out == len(processed) and runtime.face_switches == 1
    assert old.closed.wait(2.0) and new.closed.is_set()
    assert not runtime.replace_processor(_Stamping("late", processed)), "no switch once stopping"


class _FindsAFaceLate(IdentityProcessor):
    """STAND-IN for the masker (no faces in testsrc2): passes frames through as new frames
    and says, of processed frame ``late``, that it found a face in ``box`` (a masker's
    ``new_face_boxes``): one it did not know on the frame before."""

    def __init__(self, late: int, box: tuple[int, int, int, int]) -> None:
        self.late, self.box, self.calls = late, box, 0
        self.new_face_boxes: tuple | None = None
        self.cover_style = "pixelate"

    def process(self, frame: av.VideoFrame) -> av.VideoFrame:
        self.new_face_boxes = (self.box,) if self.calls == self.late else ()
        self.calls += 1
        out = av.VideoFrame.from_ndarray(frame.to_ndarray(format="yuv420p"), format="yuv420p")
        out.pts, out.time_base = frame.pts, frame.time_base
        return out


@pytest.mark.e2e
def test_a_face_found_late_is_covered_in_the_frame_held_back(clip_small: Path, tmp_path: Path) -> None:
    """The runtime holds each processed frame back one frame (pipeline.lookahead_frames 1):
    the place of a face the processor found on processed frame 20 is covered in processed
    frame 19 as it goes to the target, nothing else changes, and the last frame leaves at
    the stream's end. Received frames are matched to the source by timestamp (the receiver
    keeps the relay's), so a frame the slot drops under load shifts nothing."""
    box = (200, 100, 360, 260)
    tags = flv_tags(clip_small)[:150]
    processor = _FindsAFaceLate(20, box)
    receiver = start_receiver(tmp_path / "out.flv")
    metrics = MediaMetrics()
    runtime = SessionRuntime("ses_l", [Target(receiver.url, "rx")], processor, RuntimeSettings(), metrics)
    runtime.start()
    feed(runtime, tags)
    runtime.stop()
    assert receiver.wait(20) == 0
    assert runtime.frames_out == processor.calls, "the frame held back at the end is sent too"
    video_ms = [ms for kind, ms, body in tags if kind == "video" and body[1] == 1]  # what the runtime was fed
    with av.open(str(clip_small)) as c:
        source = {ms: f.to_ndarray(format="gray") for f, ms in zip(c.decode(video=0), video_ms)}
    with av.open(str(receiver.path)) as c:
        received = [(round(float(f.pts * f.time_base) * 1000), f.to_ndarray(format="gray")) for f in c.decode(video=0)]
    assert len(received) == processor.calls
    assert all(ms in source for ms, _ in received), "every received frame is one that was fed, by its timestamp"
    sent, got = [source[ms] for ms, _ in received], [g for _, g in received]
    x0, y0, x1, y1 = box
    diff = [float(np.abs(a[y0:y1, x0:x1].astype(np.int16) - b[y0:y1, x0:x1]).mean()) for a, b in zip(sent, got)]
    outside = [float(np.abs(a[:, :x0].astype(np.int16) - b[:, :x0]).mean()) for a, b in zip(sent, got)]
    assert processor.calls > 30
    assert int(np.argmax(diff)) == 19 and diff[19] > 4 * float(np.median(diff)), f"frame 19's box: {diff[19]:.1f}, median {np.median(diff):.1f}"
    assert outside[19] < 2 * float(np.median(outside)) + 1, "only the face's place is covered"
    assert metrics.registry.get_sample_value("hikariedge_covered_total", {"session": "ses_l", "reason": "found_late"}) == 1
