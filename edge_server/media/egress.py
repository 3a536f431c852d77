"""Push one session's encoded stream to one RTMP/RTMPS target, in a thread of its own.

PyAV's FLV muxer builds the stream (avcC, onMetaData, tags); our RTMP publish client
carries it over a plain socket (see _connect for why PyAV does not dial the target).

Each target has a bounded queue: a target that stalls or falls behind never slows the
ingest or the other targets; it skips ahead to the next keyframe instead. A target that is
down is retried with exponential backoff, and on every (re)connect the encoder is asked for
a keyframe so that the audience does not wait a whole GOP.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import av

from edge_server.flv import AacConfig, FlvTagStream
from edge_server.media.codecs import MS, EncodedVideo
from edge_server.rtmp import amf0
from edge_server.rtmp.client import RtmpClientError, RtmpPublishClient, parse_rtmp_url
from edge_server.rtmp.messages import MessageType

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamLayout:
    """What every target's FLV header says; fixed for the life of a publish."""

    width: int
    height: int
    fps: float
    video_extradata: bytes  # Annex B SPS/PPS from our encoder; the FLV muxer writes it as avcC
    audio: AacConfig | None
    audio_extradata: bytes | None  # the publisher's AudioSpecificConfig, passed through


@dataclass
class AudioPacket:
    pts: int  # ms, the publisher's own timestamp
    data: bytes


@dataclass(frozen=True)
class EgressSettings:
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0
    queue_seconds: float = 2.0
    io_timeout_s: float = 5.0


@dataclass
class EgressHooks:
    """Callbacks into the session (all thread-safe)."""

    request_keyframe: Callable[[], None]
    on_reconnect: Callable[[], None] = lambda: None
    on_sent: Callable[[EncodedVideo | AudioPacket, int], None] = lambda packet, size: None
    on_skip: Callable[[int], None] = lambda packets: None


class RtmpEgress:
    def __init__(self, name: str, url: str, layout: StreamLayout, settings: EgressSettings, hooks: EgressHooks) -> None:
        self.name = name
        self._url = url  # holds the platform's stream key: never log it
        self.layout = layout
        self.settings = settings
        self.hooks = hooks
        self.connected = False
        self.reconnects = 0
        self._queue: deque[EncodedVideo | AudioPacket] = deque()
        self._max_queue = max(30, int(settings.queue_seconds * (layout.fps + 50)))  # video + ~47 AAC frames/s
        self._cond = threading.Condition()
        self._stopping = False
        self._need_keyframe = True
        self._thread = threading.Thread(target=self._run, name=f"egress-{name}", daemon=True)

    @property
    def url(self) -> str:
        """For telling targets apart (a live target change); it holds the key: never log it."""
        return self._url

    def start(self) -> None:
        self._thread.start()

    def send(self, packet: EncodedVideo | AudioPacket) -> None:
        """Queue a packet without blocking; overflow empties the queue and waits for a keyframe."""
        with self._cond:
            if self._stopping:
                return
            if len(self._queue) >= self._max_queue:
                skipped = len(self._queue)
                self._queue.clear()
                self._need_keyframe = True
                self.hooks.on_skip(skipped)
                self.hooks.request_keyframe()
                log.warning("egress %s fell behind; skipped %d packets to the next keyframe", self.name, skipped)
            self._queue.append(packet)
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued, write the FLV trailer and stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- thread side --------------------------------------------------------------

    def _run(self) -> None:
        backoff = self.settings.reconnect_initial_s
        first = True
        while not self._stopping:
            try:
                container = self._connect()
            except Exception as exc:  # any failure here is retried; the ingest must never notice
                if first:
                    log.warning("egress %s: cannot connect (%s: %s); retrying", self.name, type(exc).__name__, exc)
                first = False
                self._drain_while_disconnected(backoff)
                backoff = min(self.settings.reconnect_max_s, backoff * 2)
                continue
            if not first:
                self.reconnects += 1
                self.hooks.on_reconnect()
            first = False
            backoff = self.settings.reconnect_initial_s
            log.info("egress %s connected", self.name)
            self._pump(container)

    def _connect(self) -> av.container.OutputContainer:
        """Our own socket and RTMP publish handshake, then PyAV's FLV muxer writing into it.

        PyAV opens network outputs (avio_open) with the GIL held: letting it dial the target
        froze every session and the event loop for the whole connect (272 ms measured on
        loopback; a black-holed host would stall the node for the full timeout)."""
        timeout = self.settings.io_timeout_s
        url = parse_rtmp_url(self._url)
        sock = socket.create_connection((url.host, url.port), timeout=timeout)
        try:
            if url.scheme == "rtmps":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=url.host)
            client = RtmpPublishClient(url)
            sock.sendall(client.initial_bytes())
            deadline = time.monotonic() + timeout
            while not client.published:
                if time.monotonic() > deadline:
                    raise TimeoutError("publish handshake timed out")
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("target closed the connection during the publish handshake")
                client.receive_data(data)
                sock.sendall(client.data_to_send())
            self._sink = _RtmpSink(sock, client)
            container = av.open(self._sink, mode="w", format="flv")
            self._video, self._audio = self._add_streams(container)
        except BaseException:
            sock.close()
            raise
        with self._cond:  # send from the first queued keyframe; ask for one if none is queued
            self._need_keyframe = True
            have_keyframe = any(isinstance(p, EncodedVideo) and p.is_keyframe for p in self._queue)
        if not have_keyframe:
            self.hooks.request_keyframe()
        self.connected = True
        return container

    def _add_streams(self, container: av.container.OutputContainer) -> tuple:
        """Streams that carry OUR codec config. PyAV opens an encoder on every stream it muxes;
        we open a throwaway one ourselves and then overwrite its extradata, otherwise the FLV
        header would carry that encoder's SPS instead of the one our packets were made with."""
        layout = self.layout
        video = container.add_stream("h264")
        video.width, video.height = layout.width, layout.height
        ctx = video.codec_context
        ctx.time_base, ctx.framerate = MS, Fraction(layout.fps).limit_denominator(1001)
        ctx.options = {"preset": "ultrafast"}
        ctx.open()
        ctx.extradata = layout.video_extradata
        video.time_base = MS
        audio = None
        if layout.audio is not None and layout.audio_extradata:
            audio = container.add_stream("aac", rate=layout.audio.sample_rate, layout="stereo" if layout.audio.channels > 1 else "mono")
            audio.codec_context.open()
            audio.codec_context.extradata = layout.audio_extradata
            audio.time_base = MS
        return video, audio

    def _pump(self, container: av.container.OutputContainer) -> None:
        last_dts: dict[str, int] = {}
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._stopping:
                        self._cond.wait(0.5)
                    if not self._queue:
                        break  # stopping and drained
                    packet = self._queue.popleft()
                    if self._need_keyframe:
                        if not (isinstance(packet, EncodedVideo) and packet.is_keyframe):
                            continue
                        self._need_keyframe = False
                self._write(container, packet, last_dts)
            container.close()  # FLV trailer
            self._sink.finish()
        except (av.FFmpegError, OSError, RtmpClientError) as exc:
            log.warning("egress %s: connection lost (%s: %s); reconnecting", self.name, type(exc).__name__, exc)
            self._close_quietly(container)
        finally:
            self._sink.close()
            self.connected = False

    def _write(self, container: av.container.OutputContainer, packet: EncodedVideo | AudioPacket, last_dts: dict[str, int]) -> None:
        if isinstance(packet, EncodedVideo):
            stream, kind, pts, dts = self._video, "video", packet.pts, packet.dts
        elif self._audio is not None:
            stream, kind, pts, dts = self._audio, "audio", packet.pts, packet.pts
        else:
            return
        previous = last_dts.get(kind)
        if previous is not None and dts <= previous:  # FLV needs rising timestamps per stream
            if kind == "audio":
                return
            dts = previous + 1
            pts = max(pts, dts)
        last_dts[kind] = dts
        out = av.Packet(packet.data)
        out.pts, out.dts, out.time_base, out.stream = pts, dts, MS, stream
        if isinstance(packet, EncodedVideo):
            out.is_keyframe = packet.is_keyframe
        container.mux(out)
        self.hooks.on_sent(packet, len(packet.data))

    def _drain_while_disconnected(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._stopping:
                self._queue.clear()  # nobody to send to: don't let latency pile up
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._queue.clear()

    @staticmethod
    def _close_quietly(container: av.container.OutputContainer) -> None:
        try:
            container.close()
        except (av.FFmpegError, OSError, RtmpClientError):
            pass


class _RtmpSink:
    """The file object PyAV's FLV muxer writes to: each whole FLV tag leaves as one RTMP
    message on the published stream. Blocking socket calls release the GIL."""

    def __init__(self, sock: socket.socket, client: RtmpPublishClient) -> None:
        self._sock = sock
        self._client = client
        self._tags = FlvTagStream()

    def write(self, data: bytes) -> int:
        for tag in self._tags.feed(bytes(data)):
            body = tag.body
            if tag.tag_type == MessageType.DATA_AMF0:
                body = amf0.encode("@setDataFrame") + body  # how publishers hand over onMetaData
            self._sock.sendall(self._client.media(tag.tag_type, tag.timestamp, body))
        self._poll()
        return len(data)

    def flush(self) -> None:
        pass

    def _poll(self) -> None:
        """Answer pings and acknowledgements without ever waiting for the server."""
        pending = isinstance(self._sock, ssl.SSLSocket) and self._sock.pending()
        if not pending and not select.select([self._sock], [], [], 0)[0]:
            return
        data = self._sock.recv(65536)
        if not data:
            raise ConnectionError("target closed the connection")
        self._client.receive_data(data)
        reply = self._client.data_to_send()
        if reply:
            self._sock.sendall(reply)

    def finish(self) -> None:
        """Say goodbye properly so the platform ends the broadcast rather than waiting."""
        try:
            self._sock.sendall(self._client.close_stream())
        except OSError:
            pass

    def close(self) -> None:
        self._sock.close()
