"""One live publish: FLV tags in -> decode -> latest-frame slot -> process -> encode once -> targets.

The event loop only parses tag headers and queues bytes; decoding runs on one thread and
processing plus encoding on another, joined by a slot of capacity one so that a slow
pipeline lowers the frame rate instead of adding latency. Output video keeps the input's
timestamps and AAC passes through untouched, so audio stays in sync.

A live face switch (a new mode or persona, ``replace_processor``) hands the pipeline thread
a new processor, built elsewhere, which it takes up between two frames: every frame is
masked by the old processor or by the new one.

A WHIP publish enters the same slot with frames aiortc has already decoded (on_frame), and
its audio arrives as decoded frames (on_audio_frame) that one AAC encoder per session turns
into what the RTMP targets need. The encoded video also goes to the session's WHEP viewers
(a ViewerHub), together with Opus made once per session; audio work runs on a thread of its
own so that the event loop only moves bytes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import av

from edge_server.flv import (
    AAC_RAW,
    AAC_SEQUENCE_HEADER,
    AVC_NALU,
    AVC_SEQUENCE_HEADER,
    AacConfig,
    FlvError,
    parse_audio_specific_config,
    parse_audio_tag,
    parse_video_tag,
)
from edge_server.media.codecs import MS, DecodeError, EncodedVideo, EncoderSettings, H264Decoder, H264Encoder
from edge_server.media.egress import AudioPacket, EgressHooks, EgressSettings, RtmpEgress, StreamLayout
from edge_server.media.slot import LatestSlot, SlotClosed
from edge_server.metrics import MediaMetrics
from edge_server.webrtc.audio import AacEncoder, AacToOpus, OpusEncoder
from edge_server.webrtc.hub import ViewerHub
from pipeline.lookahead import Lookahead
from pipeline.stage import FrameProcessor
from signaling.models import Target

log = logging.getLogger(__name__)

KEYFRAME_REQUEST_INTERVAL_S = 0.5  # viewers/targets asking for keyframes must not flood the encoder
AUDIO_QUEUE_MAX = 250  # ~5 s of audio frames waiting for the audio thread


@dataclass(frozen=True)
class RuntimeSettings:
    default_fps: float = 30.0
    bitrate_kbps: int = 4500
    gop_seconds: float = 2.0
    preset: str = "ultrafast"
    encoder_threads: int = 1
    max_decode_backlog_s: float = 1.0
    egress: EgressSettings = field(default_factory=EgressSettings)
    aac_bitrate_kbps: int = 128  # AAC made from WebRTC audio for the RTMP targets
    opus_bitrate_kbps: int = 96  # Opus made for WHEP viewers
    lookahead_frames: int = 1  # masked frames held back to cover a face found late (pipeline/lookahead.py)


@dataclass
class _VideoInput:
    ingest_time: float
    dts: int
    pts: int
    keyframe: bool
    data: bytes
    config: bool = False  # an AVC sequence header rather than a picture


_END = object()


class SessionRuntime:
    def __init__(
        self,
        session_id: str,
        targets: list[Target],
        processor: FrameProcessor,
        settings: RuntimeSettings,
        metrics: MediaMetrics,
        viewers: ViewerHub | None = None,
    ) -> None:
        self.session_id = session_id
        self.targets = targets
        self.processor = processor
        self.settings = settings
        self.metrics = metrics
        self.fps = settings.default_fps
        self.metadata: dict[str, Any] = {}
        self.egresses: tuple[RtmpEgress, ...] = ()
        self.encoder: H264Encoder | None = None
        self.encoders_opened = 0  # one per publish: targets and viewers share its packets
        self.viewers = viewers
        self.frames_in = 0
        self.frames_out = 0
        self.dropped: Counter[str] = Counter()
        self.started_at = time.monotonic()
        self._out_times: deque[float] = deque(maxlen=120)
        self._audio_config: AacConfig | None = None
        self._audio_extradata: bytes | None = None
        self._video_queue: queue.SimpleQueue[_VideoInput | object] = queue.SimpleQueue()
        self._backlog = 0
        self._skip_to_keyframe = False
        self._slot: LatestSlot[tuple[av.VideoFrame, float]] = LatestSlot()
        self._last_keyframe_request = 0.0
        self._keyframe_pending = False
        self._lock = threading.Lock()
        self._audio_queue: queue.Queue[tuple | object] = queue.Queue(AUDIO_QUEUE_MAX)
        self._aac_encoder: AacEncoder | None = None  # WebRTC audio -> AAC for the targets
        self._opus_encoder: OpusEncoder | None = None  # WebRTC audio -> Opus for viewers
        self._aac_to_opus: AacToOpus | None = None  # RTMP's AAC -> Opus for viewers
        self._audio_thread = threading.Thread(target=self._audio_loop, name=f"audio-{session_id}", daemon=True)
        self._decode_thread = threading.Thread(target=self._decode_loop, name=f"decode-{session_id}", daemon=True)
        self._worker_thread = threading.Thread(target=self._worker_loop, name=f"pipeline-{session_id}", daemon=True)
        self._stopped = False
        self._next_processor: FrameProcessor | None = None  # a live face switch, taken up before the next frame
        self._egress_lock = threading.Lock()  # the egress set: made on the pipeline thread, changed from the API
        self._egress_kit: tuple[StreamLayout, EgressHooks] | None = None  # what a target added live is made with
        self.face_switches = 0
        self._lookahead: Lookahead[float] = Lookahead(settings.lookahead_frames, on_cover=self._count_found_late)

    def start(self) -> None:
        self._decode_thread.start()
        self._worker_thread.start()
        self._audio_thread.start()
        if self.viewers is not None:
            self.viewers.bind(self.request_keyframe)

    # -- called on the event loop (RTMP/WebRTC ingest) -------------------------------

    def on_metadata(self, metadata: dict[str, Any]) -> None:
        self.metadata = dict(metadata)
        fps = metadata.get("framerate") or metadata.get("fps")
        if isinstance(fps, (int, float)) and 1 <= fps <= 240:
            self.fps = float(fps)

    def on_video(self, timestamp: int, payload: bytes) -> None:
        self._count_bytes(len(payload))
        try:
            tag = parse_video_tag(payload)
        except FlvError as exc:
            self._drop("decode_error")
            log.warning("session %s: bad video tag: %s", self.session_id, exc)
            return
        if tag is None or tag.packet_type not in (AVC_SEQUENCE_HEADER, AVC_NALU) or not tag.data:
            return
        item = _VideoInput(time.monotonic(), timestamp, timestamp + tag.composition_time, tag.is_keyframe, tag.data,
                           config=tag.packet_type == AVC_SEQUENCE_HEADER)
        max_backlog = max(2, int(self.fps * self.settings.max_decode_backlog_s))
        with self._lock:
            if not item.config and self._backlog >= max_backlog:
                self._skip_to_keyframe = True  # decoding fell behind: jump to the next keyframe, don't pile up
            if self._skip_to_keyframe and not item.config:
                if not item.keyframe:
                    self._drop("backlog")
                    return
                self._skip_to_keyframe = False
            self._backlog += 1
        self._video_queue.put(item)

    def on_audio(self, timestamp: int, payload: bytes) -> None:
        self._count_bytes(len(payload))
        try:
            tag = parse_audio_tag(payload)
        except FlvError as exc:
            log.warning("session %s: bad audio tag: %s", self.session_id, exc)
            return
        if tag.packet_type == AAC_SEQUENCE_HEADER:
            self._audio_config = parse_audio_specific_config(tag.data)
            self._audio_extradata = tag.data
        elif tag.packet_type == AAC_RAW and tag.data:
            packet = AudioPacket(timestamp, tag.data)
            for egress in self.egresses:
                egress.send(packet)
            if self.viewers is not None and self.viewers.active and self._audio_extradata:
                self._queue_audio(("aac", timestamp, tag.data, self._audio_extradata))

    # -- called on the event loop (WebRTC ingest: frames aiortc decoded) -------------------

    def on_frame(self, frame: av.VideoFrame, ms: int, ingest_time: float | None = None) -> None:
        """A decoded picture at `ms` on the session's timeline; it goes through the same slot."""
        frame.pts, frame.time_base = ms, MS
        self._admit_frame(frame, ingest_time if ingest_time is not None else time.monotonic())

    def configure_audio(self, sample_rate: int = 48000, channels: int = 2) -> None:
        """WebRTC audio will follow: open the AAC encoder now so that the targets' header has audio."""
        self._aac_encoder = AacEncoder(sample_rate, channels, self.settings.aac_bitrate_kbps * 1000)
        self._audio_extradata = self._aac_encoder.extradata
        self._audio_config = parse_audio_specific_config(self._audio_extradata)

    def on_audio_frame(self, frame: av.AudioFrame, ms: float) -> None:
        """A decoded audio frame at `ms`: AAC for the targets, Opus for viewers (audio thread)."""
        self._queue_audio(("pcm", frame, ms))

    def _queue_audio(self, job: tuple) -> None:
        try:
            self._audio_queue.put_nowait(job)
        except queue.Full:
            log.warning("session %s: audio thread fell behind; dropped a frame", self.session_id)

    # -- life cycle ----------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> None:
        """Blocking: drain, close the targets cleanly. Run it off the event loop."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self.viewers is not None:
            self.viewers.unbind(self.request_keyframe)
        self._video_queue.put(_END)
        self._audio_queue.put(_END)
        for thread in (self._decode_thread, self._worker_thread, self._audio_thread):
            thread.join(timeout)
            if thread.is_alive():  # a daemon: it cannot hold up the process, but it should not happen
                log.warning("session %s: thread %s did not stop within %.0f s", self.session_id, thread.name, timeout)
        with self._egress_lock:
            egresses = self.egresses
        for egress in egresses:
            egress.close(timeout)
        with self._lock:
            pending, self._next_processor = self._next_processor, None
        for processor in (self.processor, pending):
            if processor is not None:
                processor.close()

    def replace_processor(self, processor: FrameProcessor) -> bool:
        """Thread-safe: switch the session's face live (a new mode or persona). The pipeline
        thread takes ``processor`` up before its next frame, so every frame is processed by the
        old one or the new one, never by neither; the old one is closed then. A processor that
        offers ``take_over(old)`` continues from the old one's faces (``FaceMasker``). False,
        and ``processor`` is left to the caller, once the runtime is stopping."""
        with self._lock:
            if self._stopped:
                return False
            superseded, self._next_processor = self._next_processor, processor
        if superseded is not None:  # two switches before a frame came: the later one wins
            superseded.close()
        return True

    def _take_next_processor(self) -> None:
        with self._lock:
            new, self._next_processor = self._next_processor, None
        if new is None:
            return
        old, self.processor = self.processor, new
        carried = False
        take_over = getattr(new, "take_over", None)
        if take_over is not None:
            try:
                carried = bool(take_over(old))
            except Exception:
                log.exception("session %s: the new pipeline could not take over the faces; it starts afresh", self.session_id)
        self.face_switches += 1
        # closing may wait for a stage still running late (up to its join timeout): not on this thread
        threading.Thread(target=old.close, name=f"close-{self.session_id}", daemon=True).start()
        log.info("session %s: face switched to %s (%s)", self.session_id, getattr(new, "mode", getattr(new, "name", "?")),
                 "the faces carried over" if carried else "started afresh")

    def request_keyframe(self) -> None:
        """Thread-safe. Rate-limited and coalesced: many targets or viewers asking at once cost one
        keyframe, and a request inside the interval is kept for its end rather than lost (a viewer
        joining just after another still gets its keyframe within KEYFRAME_REQUEST_INTERVAL_S)."""
        with self._lock:
            self._keyframe_pending = True

    def _take_keyframe_request(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            if not self._keyframe_pending or now - self._last_keyframe_request < KEYFRAME_REQUEST_INTERVAL_S:
                return False
            self._keyframe_pending = False
            self._last_keyframe_request = now
            return True

    @staticmethod
    def idle_stats() -> dict[str, Any]:
        """The figures of a session whose runtime has not started yet (same keys as stats())."""
        return {"frames_in": 0, "frames_out": 0, "frames_dropped": {}, "fps_out": 0.0, "uptime_s": 0.0, "targets": [], "face_switches": 0}

    def stats(self) -> dict[str, Any]:
        times = list(self._out_times)
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "frames_dropped": dict(self.dropped),
            "fps_out": round(fps, 2),
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "targets": [{"name": e.name, "connected": e.connected, "reconnects": e.reconnects} for e in self.egresses],
            "face_switches": self.face_switches,
        }

    # -- decode thread -----------------------------------------------------------------

    def _decode_loop(self) -> None:
        decoder: H264Decoder | None = None
        pending_ingest: dict[int, float] = {}
        while True:
            item = self._video_queue.get()
            if item is _END:
                break
            assert isinstance(item, _VideoInput)
            with self._lock:
                self._backlog -= 1
            if item.config:
                try:
                    decoder = H264Decoder(item.data)
                except av.FFmpegError as exc:
                    log.warning("session %s: unusable AVC config: %s", self.session_id, exc)
                    decoder = None
                continue
            if decoder is None:
                self._drop("decode_error")  # pictures before any sequence header cannot be decoded
                continue
            started = time.perf_counter()
            pending_ingest[item.pts] = item.ingest_time
            try:
                frames = decoder.decode(item.data, item.pts, item.dts)
            except DecodeError as exc:
                self._drop("decode_error")
                log.info("session %s: skipped a corrupt frame: %s", self.session_id, exc)
                continue
            except Exception:  # the decode thread must outlive any one bad packet
                self._drop("decode_error")
                log.exception("session %s: decoder failed on a packet; skipped", self.session_id)
                continue
            self._observe("decode", time.perf_counter() - started)
            if len(pending_ingest) > 64:
                for pts in sorted(pending_ingest)[:-32]:
                    del pending_ingest[pts]
            for frame in frames:
                self._admit_frame(frame, pending_ingest.pop(int(frame.pts), item.ingest_time))
        self._slot.close()

    def _admit_frame(self, frame: av.VideoFrame, ingest_time: float) -> None:
        self.frames_in += 1
        self.metrics.frames_in.labels(self.session_id).inc()
        self.metrics.frames_in_all.inc()
        try:
            if self._slot.put((frame, ingest_time)):
                self._drop("slot")
        except SlotClosed:
            pass  # stopping

    # -- pipeline worker thread -----------------------------------------------------------

    def _worker_loop(self) -> None:
        while True:
            try:
                taken = self._slot.take(timeout=1.0)
            except SlotClosed:
                for output, ingest_time in self._lookahead.flush():  # the stream's last frames
                    self._encode(output, ingest_time)
                return
            if taken is None:
                continue
            frame, ingest_time = taken
            self._take_next_processor()
            started = time.perf_counter()
            try:
                output = self.processor.process(frame)
            except Exception:
                # fail closed: a frame the pipeline could not handle is never sent as it came in
                log.exception("session %s: frame processor failed; frame withheld", self.session_id)
                self._drop("process_error")
                continue
            # the frames held back are covered where this one found a face anew, then leave
            released = self._lookahead.push_processed(self.processor, output, ingest_time)
            self._observe("process", time.perf_counter() - started)
            for output, ingest_time in released:
                self._encode(output, ingest_time)

    def _encode(self, output: av.VideoFrame, ingest_time: float) -> None:
        """Encode one processed frame and hand its packets to the targets and viewers."""
        started = time.perf_counter()
        encoder = self.encoder or self._open_encoder(output)
        if self._take_keyframe_request():
            encoder.request_keyframe()
        packets = encoder.encode(output, ingest_time)
        self._observe("encode", time.perf_counter() - started)
        if self._egress_kit is None and packets:
            self._start_egress(encoder)
        for packet in packets:
            self._fan_out(packet)

    def _open_encoder(self, frame: av.VideoFrame) -> H264Encoder:
        s = self.settings
        # the encoder's size is fixed for the publish: targets cannot change resolution mid-stream
        width, height = frame.width - frame.width % 2, frame.height - frame.height % 2
        self.encoder = H264Encoder(EncoderSettings(width, height, self.fps, s.bitrate_kbps, s.gop_seconds, s.preset, s.encoder_threads))
        self.encoders_opened += 1
        with self._lock:  # its first frame is a keyframe: requests made so far are answered by it
            self._keyframe_pending = False
            self._last_keyframe_request = time.monotonic()
        log.info("session %s: encoding %dx%d at %.2f fps", self.session_id, width, height, self.fps)
        return self.encoder

    def _start_egress(self, encoder: H264Encoder) -> None:
        layout = StreamLayout(
            encoder.settings.width, encoder.settings.height, self.fps, encoder.extradata, self._audio_config, self._audio_extradata
        )
        hooks = EgressHooks(
            request_keyframe=self.request_keyframe,
            on_reconnect=self._on_reconnect,
            on_sent=self._on_sent,
            on_skip=lambda n: self._drop("egress_skip", n),
        )
        with self._egress_lock:
            if self._stopped:
                return
            self._egress_kit = (layout, hooks)
            egresses = tuple(RtmpEgress(t.name, t.url, layout, self.settings.egress, hooks) for t in self.targets)
            for egress in egresses:
                egress.start()
            self.egresses = egresses

    def replace_targets(self, targets: list[Target]) -> None:
        """Thread-safe: the session's targets changed while live. A target that stays (the
        same URL; its name is only a label) keeps its connection; a new one is dialled and
        starts at the next keyframe (asked for now); a removed one is flushed and closed
        cleanly on a thread of its own, so neither the caller nor the other targets wait."""
        with self._egress_lock:
            self.targets = list(targets)
            if self._egress_kit is None or self._stopped:
                return  # no packet yet: the first one starts exactly these targets
            layout, hooks = self._egress_kit
            spare: dict[str, list[RtmpEgress]] = {}  # by URL: a target's name is only its label (and may be positional)
            for egress in self.egresses:
                spare.setdefault(egress.url, []).append(egress)
            kept: list[RtmpEgress] = []
            added: list[RtmpEgress] = []
            for t in targets:
                same = spare.get(t.url)
                if same:
                    kept.append(same.pop(0))
                    kept[-1].name = t.name
                else:
                    added.append(RtmpEgress(t.name, t.url, layout, self.settings.egress, hooks))
                    kept.append(added[-1])
            removed = [e for left in spare.values() for e in left]
            for egress in added:
                egress.start()
            self.egresses = tuple(kept)
        for egress in removed:
            threading.Thread(target=egress.close, name=f"close-{egress.name}", daemon=True).start()
        if added:
            self.request_keyframe()
        log.info("session %s: targets changed live: %d added, %d removed", self.session_id, len(added), len(removed))

    def _fan_out(self, packet: EncodedVideo) -> None:
        self.frames_out += 1
        self._out_times.append(time.monotonic())
        self.metrics.frames_out.labels(self.session_id).inc()
        self.metrics.frames_out_all.inc()
        for egress in self.egresses:
            egress.send(packet)
        if self.viewers is not None:
            self.viewers.send_video(packet)

    # -- audio thread -------------------------------------------------------------------

    def _audio_loop(self) -> None:
        while True:
            job = self._audio_queue.get()
            if job is _END:
                return
            try:
                self._audio_job(job)  # type: ignore[arg-type]
            except Exception:  # one bad frame must not end the session's sound
                log.exception("session %s: audio transcoding failed on a frame; skipped", self.session_id)

    def _audio_job(self, job: tuple) -> None:
        kind = job[0]
        viewers = self.viewers if self.viewers is not None and self.viewers.active else None
        if kind == "aac":  # RTMP's AAC for viewers
            _, ms, data, config = job
            if viewers is None:
                return
            if self._aac_to_opus is None or self._aac_to_opus.config != config:
                self._aac_to_opus = AacToOpus(config, self.settings.opus_bitrate_kbps * 1000)
            for opus in self._aac_to_opus.feed(data, ms):
                viewers.send_audio(opus)
        elif kind == "pcm":  # WebRTC audio: AAC for the targets, Opus for viewers
            _, frame, ms = job
            if self._aac_encoder is not None:
                for aac in self._aac_encoder.encode(frame, ms):
                    packet = AudioPacket(aac.pts_ms, aac.data)
                    for egress in self.egresses:
                        egress.send(packet)
            if viewers is not None:
                if self._opus_encoder is None:
                    self._opus_encoder = OpusEncoder(self.settings.opus_bitrate_kbps * 1000)
                for opus in self._opus_encoder.encode(frame, ms):
                    viewers.send_audio(opus)

    # -- bookkeeping (any thread) ------------------------------------------------------

    def _on_sent(self, packet: EncodedVideo | AudioPacket, size: int) -> None:
        self.metrics.bytes_out.labels(self.session_id).inc(size)
        self.metrics.bytes_out_all.inc(size)
        if isinstance(packet, EncodedVideo) and packet.ingest_time:
            latency = time.monotonic() - packet.ingest_time
            self.metrics.latency_seconds.observe(latency)
            self.metrics.session_latency_seconds.labels(self.session_id).observe(latency)

    def _on_reconnect(self) -> None:
        self.metrics.reconnects.labels(self.session_id).inc()
        self.metrics.reconnects_all.inc()

    def _count_bytes(self, size: int) -> None:
        self.metrics.bytes_in.labels(self.session_id).inc(size)
        self.metrics.bytes_in_all.inc(size)

    def _count_found_late(self) -> None:
        self.metrics.count_cover(self.session_id, "found_late")

    def _drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count
        self.metrics.frames_dropped.labels(self.session_id, reason).inc(count)
        self.metrics.frames_dropped_all.labels(reason).inc(count)

    def _observe(self, stage: str, seconds: float) -> None:
        self.metrics.stage_seconds.labels(stage).observe(seconds)
        self.metrics.session_stage_seconds.labels(self.session_id, stage).observe(seconds)
