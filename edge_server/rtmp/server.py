"""Thin asyncio adapter around RtmpServerConnection: sockets, timeouts, the handler.

All protocol decisions live in connection.py; this module moves bytes, enforces the
handshake and idle timeouts, and turns events into PublishHandler/MediaSink calls.
Logs carry the peer address and a reason, never the stream key.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_server.rtmp.chunk import DEFAULT_MAX_CHUNK_SIZE, DEFAULT_MAX_MESSAGE_SIZE
from edge_server.rtmp.connection import DEFAULT_OUT_CHUNK_SIZE, RtmpServerConnection
from edge_server.rtmp.messages import (
    AudioReceived,
    Event,
    MetadataReceived,
    ProtocolError,
    PublishEnded,
    PublishRequested,
    VideoReceived,
)

__all__ = ["MediaSink", "PublishHandler", "PublishRequest", "PublisherControl", "RtmpServer"]

logger = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
CLOSE_GRACE_S = 1.0
STOP_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """What a client asked to publish. Secrets (the stream key, and tcUrl, whose query
    may carry tokens) are kept out of repr so they cannot leak into logs."""

    app: str
    stream_key: str = field(repr=False)
    tc_url: str = field(repr=False)
    peer: str


class MediaSink(Protocol):
    """Receives one publish's media, on the event loop. Keep each call short."""

    def on_metadata(self, metadata: dict[str, Any]) -> None: ...

    def on_audio(self, timestamp: int, payload: bytes) -> None: ...

    def on_video(self, timestamp: int, payload: bytes) -> None: ...

    def on_close(self) -> None:
        """Called exactly once: unpublish, disconnect, protocol error or kick."""


class PublisherControl:
    """Handed to the handler so the session owner can kick a live publisher."""

    def __init__(self, session: _Session) -> None:
        self._session = session

    @property
    def peer(self) -> str:
        return self._session.peer

    @property
    def closed(self) -> bool:
        return self._session.close_reason is not None

    def close(self, reason: str = "closed by server") -> None:
        """Drop the connection now (call from the event loop); on_close follows."""
        self._session.kick(reason)


class PublishHandler(Protocol):
    async def on_publish(self, request: PublishRequest, publisher: PublisherControl) -> MediaSink | None:
        """Return a sink to accept, or None to reject (BadName) and close."""


class RtmpServer:
    """Accepts RTMP publishers and hands each accepted publish to `handler`."""

    def __init__(
        self,
        handler: PublishHandler,
        host: str = "0.0.0.0",
        port: int = 1935,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 30.0,
        *,
        chunk_size: int = DEFAULT_OUT_CHUNK_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_chunk_size: int = DEFAULT_MAX_CHUNK_SIZE,
    ) -> None:
        self.handler = handler
        self.host = host
        self._requested_port = port
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.chunk_size = chunk_size
        self.max_message_size = max_message_size
        self.max_chunk_size = max_chunk_size
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked), else the requested one."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._requested_port

    @property
    def connection_count(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        self._stopping = False
        self._server = await asyncio.start_server(self._on_client, self.host, self._requested_port)
        logger.info("rtmp: listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and close every connection (each sink gets on_close)."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            session.kick("server stopping")
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._stopping:
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        session = _Session(self, reader, writer)
        self._tasks.add(task)
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
            self._tasks.discard(task)


class _Session:
    """One TCP connection: pumps bytes through RtmpServerConnection."""

    def __init__(
        self, server: RtmpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.peer = _format_peer(writer.get_extra_info("peername"))
        self.conn = RtmpServerConnection(
            chunk_size=server.chunk_size,
            max_chunk_size=server.max_chunk_size,
            max_message_size=server.max_message_size,
        )
        self.control = PublisherControl(self)
        self.close_reason: str | None = None
        self._sink: MediaSink | None = None
        self._stream_id: int | None = None
        self._loop = asyncio.get_running_loop()

    def kick(self, reason: str) -> None:
        if self.close_reason is not None:
            return
        self.close_reason = reason
        logger.info("rtmp %s: closing: %s", self.peer, reason)
        self.writer.transport.abort()

    async def run(self) -> None:
        logger.debug("rtmp %s: connected", self.peer)
        deadline = self._loop.time() + self.server.handshake_timeout
        try:
            async with asyncio.timeout_at(deadline) as timeout:
                await self._pump(timeout)
        except TimeoutError:
            phase = "idle timeout" if self.conn.handshake_complete else "handshake timeout"
            self._mark_closed(phase)
        except (ConnectionError, OSError) as exc:
            if self.close_reason is None:
                self.close_reason = "connection lost"
                logger.info("rtmp %s: connection lost (%s)", self.peer, type(exc).__name__)
        except Exception:
            self.close_reason = "internal error"
            logger.exception("rtmp %s: internal error, closing", self.peer)
        finally:
            self._end_sink()
            await self._close_transport()

    def _mark_closed(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            logger.info("rtmp %s: closing: %s", self.peer, reason)

    async def _pump(self, timeout: asyncio.Timeout) -> None:
        while self.close_reason is None:
            data = await self.reader.read(READ_SIZE)
            if not data:
                if self.close_reason is None:
                    self.close_reason = "peer closed"
                    logger.debug("rtmp %s: peer closed", self.peer)
                return
            events = self.conn.receive_data(data)
            finish = await self._handle(events, timeout)
            out = self.conn.data_to_send()
            if out and not self.writer.is_closing():
                self.writer.write(out)
            if finish:
                return
            await self.writer.drain()
            if self.conn.handshake_complete:
                timeout.reschedule(self._loop.time() + self.server.idle_timeout)

    async def _handle(self, events: list[Event], timeout: asyncio.Timeout) -> bool:
        """Dispatch events; True when the connection must close after flushing."""
        queue = deque(events)
        while queue:
            if self.close_reason is not None:
                return True
            event = queue.popleft()
            if isinstance(event, VideoReceived):
                if self._sink is not None and event.stream_id == self._stream_id:
                    self._call_sink(self._sink.on_video, event.timestamp, event.payload)
            elif isinstance(event, AudioReceived):
                if self._sink is not None and event.stream_id == self._stream_id:
                    self._call_sink(self._sink.on_audio, event.timestamp, event.payload)
            elif isinstance(event, MetadataReceived):
                if self._sink is not None and event.stream_id == self._stream_id:
                    self._call_sink(self._sink.on_metadata, event.metadata)
            elif isinstance(event, PublishRequested):
                queue.extend(await self._on_publish_requested(event, timeout))
            elif isinstance(event, PublishEnded):
                if event.stream_id == self._stream_id:
                    logger.info("rtmp %s: publish ended", self.peer)
                    self._end_sink()
            elif isinstance(event, ProtocolError):
                logger.warning("rtmp %s: protocol error, closing: %s", self.peer, event.reason)
                self.close_reason = "protocol error"
                return True
        return self.close_reason is not None

    async def _on_publish_requested(self, event: PublishRequested, timeout: asyncio.Timeout) -> list[Event]:
        """Ask the handler, answer the client; returns events of input held meanwhile."""
        if self._sink is not None:
            return self.conn.reject_publish(
                event.stream_id, "NetStream.Publish.BadConnection", "Already publishing"
            )
        request = PublishRequest(event.app, event.stream_key, event.tc_url, self.peer)
        timeout.reschedule(None)  # the handler's time is not the client's idle time
        try:
            sink = await self.server.handler.on_publish(request, self.control)
        except Exception:
            logger.exception("rtmp %s: publish handler failed", self.peer)
            sink = None
        timeout.reschedule(self._loop.time() + self.server.idle_timeout)
        if self.close_reason is not None:  # kicked or stopped while the handler ran
            if sink is not None:
                _safe_close(sink, self.peer)
            return []
        if sink is None:
            self.conn.reject_publish(event.stream_id)
            self._mark_closed("publish rejected")
            return []
        self._sink = sink
        self._stream_id = event.stream_id
        logger.info("rtmp %s: publishing to app %r", self.peer, event.app)
        return self.conn.accept_publish(event.stream_id)

    def _call_sink(self, method: Any, *args: Any) -> None:
        try:
            method(*args)
        except Exception:
            logger.exception("rtmp %s: media sink failed", self.peer)
            self.kick("media sink error")

    def _end_sink(self) -> None:
        sink, self._sink, self._stream_id = self._sink, None, None
        if sink is not None:
            _safe_close(sink, self.peer)

    async def _close_transport(self) -> None:
        """Close gracefully (flushing e.g. a rejection), abort if the peer stalls."""
        writer = self.writer
        if not writer.is_closing():
            writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), CLOSE_GRACE_S)
        except (TimeoutError, ConnectionError, OSError):
            writer.transport.abort()
        except asyncio.CancelledError:
            writer.transport.abort()
            raise


def _safe_close(sink: MediaSink, peer: str) -> None:
    try:
        sink.on_close()
    except Exception:
        logger.exception("rtmp %s: media sink on_close failed", peer)


def _format_peer(peername: Any) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peername) if peername else "unknown"
