"""RtmpServer over real sockets: real ffmpeg publishers and scripted clients."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edge_server.rtmp import amf0
from edge_server.rtmp.chunk import ChunkReader
from edge_server.rtmp.messages import MessageType, RtmpMessage
from edge_server.rtmp.server import PublisherControl, PublishRequest, RtmpServer
from tests.edge_server.rtmp.test_connection import HANDSHAKE, KEY, Client

FFMPEG_KEY = "ffmpeg_secret_key_42"


class RecordingSink:
    def __init__(self) -> None:
        self.metadata: list[dict[str, Any]] = []
        self.video: list[tuple[int, int]] = []
        self.audio: list[tuple[int, int]] = []
        self.closed = 0
        self.first_video = asyncio.Event()
        self.closed_event = asyncio.Event()

    def on_metadata(self, metadata: dict[str, Any]) -> None:
        self.metadata.append(metadata)

    def on_audio(self, timestamp: int, payload: bytes) -> None:
        self.audio.append((timestamp, len(payload)))

    def on_video(self, timestamp: int, payload: bytes) -> None:
        self.video.append((timestamp, len(payload)))
        self.first_video.set()

    def on_close(self) -> None:
        self.closed += 1
        self.closed_event.set()


class RecordingHandler:
    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.requests: list[PublishRequest] = []
        self.controls: list[PublisherControl] = []
        self.sinks: list[RecordingSink] = []
        self.published = asyncio.Event()

    async def on_publish(self, request: PublishRequest, publisher: PublisherControl) -> RecordingSink | None:
        self.requests.append(request)
        self.controls.append(publisher)
        if not self.accept:
            return None
        sink = RecordingSink()
        self.sinks.append(sink)
        self.published.set()
        return sink


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
async def server(handler: RecordingHandler) -> AsyncIterator[RtmpServer]:
    srv = RtmpServer(handler, "127.0.0.1", 0, handshake_timeout=0.5, idle_timeout=1.0)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
def ffmpeg_exe() -> str:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    return str(imageio_ffmpeg.get_ffmpeg_exe())


async def start_ffmpeg(exe: str, port: int, seconds: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        exe, "-hide_banner", "-nostdin", "-loglevel", "error",
        "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
        "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
        "-f", "flv", f"rtmp://127.0.0.1:{port}/live/{FFMPEG_KEY}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def wait_closed_by_server(
    reader: asyncio.StreamReader, timeout: float, since: float | None = None
) -> float:
    """Read until EOF; returns the seconds from `since` (default: now) to the close."""
    start = time.monotonic() if since is None else since
    async with asyncio.timeout(timeout):
        while True:
            try:
                if not await reader.read(65536):
                    break
            except ConnectionError:
                break
    return time.monotonic() - start


class ScriptedClient:
    """A publisher driven from the test, parsing the server's replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.client = Client()
        self.chunks = ChunkReader()

    @classmethod
    async def connect(cls, port: int) -> ScriptedClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def handshake(self) -> None:
        self.writer.write(HANDSHAKE)
        await self.reader.readexactly(1 + 2 * 1536)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def wait_for(self, predicate: Any, timeout: float = 2.0) -> RtmpMessage:
        async with asyncio.timeout(timeout):
            while True:
                while (msg := self.chunks.next_message()) is not None:
                    if predicate(msg):
                        return msg
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("server closed")
                self.chunks.receive_data(data)

    async def publish(self) -> dict[str, Any]:
        await self.handshake()
        await self.send(self.client.start_publish())
        status = await self.wait_for(lambda m: m.stream_id == 1 and m.type_id == MessageType.COMMAND_AMF0)
        return dict(amf0.decode_all(status.payload)[3])

    def close(self) -> None:
        self.writer.close()


def is_pong(msg: RtmpMessage) -> bool:
    return msg.type_id == MessageType.USER_CONTROL and msg.payload[:2] == b"\x00\x07"


# -- real ffmpeg --------------------------------------------------------------------


async def test_ffmpeg_publish_survives_silent_and_garbage_clients(
    server: RtmpServer, handler: RecordingHandler, ffmpeg_exe: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge_server.rtmp")
    proc = await start_ffmpeg(ffmpeg_exe, server.port, 2)
    try:
        async with asyncio.timeout(10):
            await handler.published.wait()
            await handler.sinks[0].first_video.wait()
        sink = handler.sinks[0]

        silent_started = time.monotonic()
        silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", server.port)
        garbage = await ScriptedClient.connect(server.port)
        await garbage.handshake()
        await garbage.send(b"\x49" + bytes(range(200)))  # fmt 1 on a fresh chunk stream
        await wait_closed_by_server(garbage.reader, 1.0)
        silent_after = await wait_closed_by_server(silent_reader, 2.0, since=silent_started)
        assert 0.4 < silent_after < 1.5  # handshake_timeout=0.5
        silent_writer.close()
        garbage.close()

        assert sink.closed == 0, "the publisher must not be affected"
        video_mid = len(sink.video)
        async with asyncio.timeout(15):
            _, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode(errors="replace")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    async with asyncio.timeout(2):
        await sink.closed_event.wait()
    [request] = handler.requests
    assert request.app == "live" and request.stream_key == FFMPEG_KEY
    assert request.tc_url.endswith(f":{server.port}/live")
    assert request.peer.startswith("127.0.0.1:")
    assert FFMPEG_KEY not in repr(request)
    assert sink.metadata and sink.metadata[0]["width"] == 320.0 and sink.metadata[0]["height"] == 240.0
    assert len(sink.video) > 50 and len(sink.video) > video_mid
    assert len(sink.audio) > 10
    assert sink.video[-1][0] > 1500  # ~2 s of media timestamps
    assert sink.closed == 1
    assert any(r.levelno == logging.WARNING and "protocol error" in r.getMessage() for r in caplog.records)
    assert any("handshake timeout" in r.getMessage() for r in caplog.records)
    assert FFMPEG_KEY not in caplog.text


async def test_rejecting_handler_makes_ffmpeg_fail_fast(
    ffmpeg_exe: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge_server.rtmp")
    handler = RecordingHandler(accept=False)
    srv = RtmpServer(handler, "127.0.0.1", 0, handshake_timeout=2, idle_timeout=2)
    await srv.start()
    try:
        started = time.monotonic()
        proc = await start_ffmpeg(ffmpeg_exe, srv.port, 10)
        try:
            async with asyncio.timeout(8):
                await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode != 0
        assert time.monotonic() - started < 5
        assert [r.stream_key for r in handler.requests] == [FFMPEG_KEY]
    finally:
        await srv.stop()
    assert FFMPEG_KEY not in caplog.text


# -- scripted clients ---------------------------------------------------------------


async def test_garbage_after_handshake_closes_only_that_connection(
    server: RtmpServer, handler: RecordingHandler, caplog: pytest.LogCaptureFixture
) -> None:
    good = await ScriptedClient.connect(server.port)
    assert (await good.publish())["code"] == "NetStream.Publish.Start"
    bad = await ScriptedClient.connect(server.port)
    await bad.handshake()
    await bad.send(b"\x49" + b"\xff" * 64)
    await wait_closed_by_server(bad.reader, 1.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "protocol error" in warnings[-1].getMessage()

    await good.send(good.client.video(0, b"\x17\x00frame") + good.client.ping(7))
    await good.wait_for(is_pong)
    sink = handler.sinks[0]
    assert sink.video == [(0, 7)] and sink.closed == 0
    good.close()
    async with asyncio.timeout(2):
        await sink.closed_event.wait()
    assert sink.closed == 1
    assert KEY not in caplog.text


async def test_handshake_and_idle_timeouts(handler: RecordingHandler) -> None:
    srv = RtmpServer(handler, "127.0.0.1", 0, handshake_timeout=0.2, idle_timeout=0.5)
    await srv.start()
    try:
        started = time.monotonic()
        truncated = await ScriptedClient.connect(srv.port)
        await truncated.send(HANDSHAKE[:1000])  # C0 + part of C1, then nothing
        idle = await ScriptedClient.connect(srv.port)
        await idle.handshake()
        idle_started = time.monotonic()
        truncated_after, idle_after = await asyncio.gather(
            wait_closed_by_server(truncated.reader, 2.0, since=started),
            wait_closed_by_server(idle.reader, 2.0, since=idle_started),
        )
        assert 0.1 < truncated_after < 0.45  # handshake_timeout, not idle_timeout
        assert 0.4 < idle_after < 1.2  # idle_timeout after a complete handshake
        truncated.close()
        idle.close()
    finally:
        await srv.stop()


async def test_unpublish_then_disconnect_closes_sink_once(
    server: RtmpServer, handler: RecordingHandler
) -> None:
    client = await ScriptedClient.connect(server.port)
    await client.publish()
    c = client.client
    await client.send(
        c.metadata({"width": 1.0}) + c.audio(0, b"\xaf\x00") + c.command("FCUnpublish", 6.0, None, KEY)
    )
    await client.send(c.command("deleteStream", 7.0, None, 1.0) + c.ping(1))
    await client.wait_for(is_pong)
    sink = handler.sinks[0]
    assert sink.closed == 1 and sink.metadata == [{"width": 1.0}] and sink.audio == [(0, 2)]
    client.close()
    await asyncio.sleep(0.05)
    assert sink.closed == 1


async def test_publisher_control_kicks_the_publisher(server: RtmpServer, handler: RecordingHandler) -> None:
    client = await ScriptedClient.connect(server.port)
    await client.publish()
    handler.controls[0].close("session revoked")
    assert handler.controls[0].closed
    await wait_closed_by_server(client.reader, 1.0)
    assert handler.sinks[0].closed == 1
    client.close()


async def test_stop_closes_every_connection(handler: RecordingHandler) -> None:
    srv = RtmpServer(handler, "127.0.0.1", 0, handshake_timeout=5, idle_timeout=5)
    await srv.start()
    assert srv.port != 0
    publisher = await ScriptedClient.connect(srv.port)
    await publisher.publish()
    idle = await ScriptedClient.connect(srv.port)
    await idle.handshake()
    assert srv.connection_count == 2
    await srv.stop()
    await wait_closed_by_server(publisher.reader, 1.0)
    await wait_closed_by_server(idle.reader, 1.0)
    assert handler.sinks[0].closed == 1
    assert srv.connection_count == 0
    publisher.close()
    idle.close()
