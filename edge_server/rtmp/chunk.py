"""RTMP chunk stream: reassembling messages from chunks and splitting messages into chunks.

Pure byte processing, no sockets. The reader accepts input split at any byte boundary
(it only commits a chunk once all of its bytes are buffered), handles the four chunk
header types, 1/2/3-byte basic headers, extended timestamps, interleaved chunk streams,
Set Chunk Size and Abort; hostile input raises ChunkError (a ValueError), never
IndexError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from edge_server.rtmp.messages import MessageType, RtmpMessage

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_CHUNK_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_CHUNK_SIZE",
    "ChunkError",
    "ChunkReader",
    "ChunkWriter",
]

DEFAULT_CHUNK_SIZE: Final = 128
MAX_CHUNK_SIZE: Final = 0x7FFFFFFF  # what the spec allows in Set Chunk Size
DEFAULT_MAX_CHUNK_SIZE: Final = 16 * 1024 * 1024  # what we accept by default
DEFAULT_MAX_MESSAGE_SIZE: Final = 8 * 1024 * 1024
DEFAULT_MAX_CHUNK_STREAMS: Final = 1024  # real clients use a handful
MAX_MESSAGE_LENGTH: Final = 0xFFFFFF  # 3-byte length field
MIN_CSID: Final = 2
MAX_CSID: Final = 65599
EXTENDED_TIMESTAMP: Final = 0xFFFFFF
TIMESTAMP_MASK: Final = 0xFFFFFFFF

_MESSAGE_HEADER_SIZE: Final = (11, 7, 3, 0)


class ChunkError(ValueError):
    """The chunk stream is malformed or exceeds a configured limit."""


@dataclass(slots=True)
class _ChunkStream:
    """Header state remembered per chunk stream id, for header compression."""

    timestamp: int = 0
    delta: int = 0  # last timestamp field: absolute after fmt 0, a delta after fmt 1/2/3
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    extended: bool = False  # last fmt 0/1/2 header carried an extended timestamp
    ext_value: int = 0
    partial: bytearray | None = None  # message being reassembled, None between messages


class _NeedData(Exception):
    """Internal: the buffered bytes do not hold a whole chunk yet."""


class ChunkReader:
    """Bytes in, complete RtmpMessages out (see module docstring)."""

    def __init__(
        self,
        *,
        max_chunk_size: int = DEFAULT_MAX_CHUNK_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_pending_bytes: int | None = None,
        max_chunk_streams: int = DEFAULT_MAX_CHUNK_STREAMS,
    ) -> None:
        """Limits bound one connection's memory against hostile peers.

        max_pending_bytes caps the bytes of all half-reassembled messages together
        (interleaving many chunk streams); it defaults to twice max_message_size.
        """
        if not 1 <= max_chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError("max_chunk_size out of range")
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.max_chunk_size = max_chunk_size
        self.max_message_size = max_message_size
        self.max_pending_bytes = 2 * max_message_size if max_pending_bytes is None else max_pending_bytes
        self.max_chunk_streams = max_chunk_streams
        self._pending_bytes = 0
        self._streams: dict[int, _ChunkStream] = {}
        self._buffer = bytearray()
        self._pos = 0

    def receive_data(self, data: bytes) -> None:
        """Append peer bytes; call next_message() until it returns None."""
        self._buffer += data

    def next_message(self) -> RtmpMessage | None:
        """Return the next complete message, or None when more bytes are needed.

        Set Chunk Size and Abort take effect here, before any later chunk is parsed,
        and are still returned so the caller can see them.
        """
        while True:
            try:
                message = self._read_chunk()
            except _NeedData:
                self._compact()
                return None
            if message is not None:
                self._apply_control(message)
                return message

    def read_messages(self, data: bytes) -> list[RtmpMessage]:
        """Convenience: receive_data(data) and collect every complete message."""
        self.receive_data(data)
        messages = []
        while (message := self.next_message()) is not None:
            messages.append(message)
        return messages

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a committed chunk."""
        return len(self._buffer) - self._pos

    def _compact(self) -> None:
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0

    def _read_chunk(self) -> RtmpMessage | None:
        """Parse and commit one chunk; return a message if it completed one."""
        buf = self._buffer
        pos = self._pos
        end = len(buf)
        if pos >= end:
            raise _NeedData
        first = buf[pos]
        fmt = first >> 6
        csid = first & 0x3F
        p = pos + 1
        if csid == 0:
            if end < p + 1:
                raise _NeedData
            csid = 64 + buf[p]
            p += 1
        elif csid == 1:
            if end < p + 2:
                raise _NeedData
            csid = 64 + buf[p] + (buf[p + 1] << 8)
            p += 2
        header_size = _MESSAGE_HEADER_SIZE[fmt]
        if end < p + header_size:
            raise _NeedData

        state = self._streams.get(csid)
        if state is None and fmt != 0:
            raise ChunkError(f"chunk type {fmt} on chunk stream {csid} with no previous header")

        ts_field = 0
        if fmt <= 2:
            ts_field = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
        if fmt <= 1:
            length = (buf[p + 3] << 16) | (buf[p + 4] << 8) | buf[p + 5]
            type_id = buf[p + 6]
        if fmt == 0:
            stream_id = int.from_bytes(buf[p + 7 : p + 11], "little")
        p += header_size

        continuing = fmt == 3 and state is not None and state.partial is not None
        extended = ts_field == EXTENDED_TIMESTAMP if fmt <= 2 else state.extended  # type: ignore[union-attr]
        ext_value: int | None = None
        if extended:
            if end < p + 4:
                raise _NeedData
            candidate = int.from_bytes(buf[p : p + 4], "big")
            # ffmpeg and librtmp repeat the extended timestamp on continuation chunks;
            # a few encoders do not. Accept both: skip it only when it is the repeat.
            if not continuing or candidate == state.ext_value:  # type: ignore[union-attr]
                ext_value = candidate
                p += 4

        if continuing:
            assert state is not None and state.partial is not None
            received = len(state.partial)
            remaining = state.length - received
        else:
            if fmt >= 2:
                assert state is not None
                length = state.length
                type_id = state.type_id
            if length > self.max_message_size:
                raise ChunkError(f"message length {length} exceeds limit {self.max_message_size}")
            remaining = length

        size = min(self.chunk_size, remaining)
        if end < p + size:
            raise _NeedData

        # The whole chunk is here: commit.
        self._pos = p + size
        if continuing:
            assert state is not None and state.partial is not None
            state.partial += buf[p : p + size]
            if len(state.partial) < state.length:
                self._add_pending(size)
                return None
            self._pending_bytes -= received
            payload = bytes(state.partial)
            state.partial = None
            return RtmpMessage(state.type_id, state.stream_id, state.timestamp, payload, csid)

        if state is None:
            if len(self._streams) >= self.max_chunk_streams:
                raise ChunkError(f"more than {self.max_chunk_streams} chunk streams")
            state = self._streams[csid] = _ChunkStream()
        self._drop_partial(state)  # a fresh header abandons any half-read message
        field_value = ext_value if ext_value is not None else ts_field
        if fmt == 0:
            state.timestamp = field_value
            state.delta = field_value
            state.stream_id = stream_id
        elif fmt == 3:
            if ext_value is not None:
                state.delta = ext_value
            state.timestamp = (state.timestamp + state.delta) & TIMESTAMP_MASK
        else:
            state.delta = field_value
            state.timestamp = (state.timestamp + field_value) & TIMESTAMP_MASK
        if fmt <= 2:
            state.extended = extended
        if ext_value is not None:
            state.ext_value = ext_value
        state.length = length
        state.type_id = type_id
        if size == length:
            return RtmpMessage(type_id, state.stream_id, state.timestamp, bytes(buf[p : p + size]), csid)
        state.partial = bytearray(buf[p : p + size])
        self._add_pending(size)
        return None

    def _add_pending(self, size: int) -> None:
        self._pending_bytes += size
        if self._pending_bytes > self.max_pending_bytes:
            raise ChunkError(f"more than {self.max_pending_bytes} bytes in unfinished messages")

    def _drop_partial(self, state: _ChunkStream) -> None:
        if state.partial is not None:
            self._pending_bytes -= len(state.partial)
            state.partial = None

    def _apply_control(self, message: RtmpMessage) -> None:
        if message.type_id == MessageType.SET_CHUNK_SIZE:
            if len(message.payload) < 4:
                raise ChunkError("Set Chunk Size message too short")
            size = int.from_bytes(message.payload[:4], "big")
            if not 1 <= size <= MAX_CHUNK_SIZE:
                raise ChunkError(f"invalid chunk size {size}")
            if size > self.max_chunk_size:
                raise ChunkError(f"chunk size {size} exceeds limit {self.max_chunk_size}")
            self.chunk_size = size
        elif message.type_id == MessageType.ABORT:
            if len(message.payload) < 4:
                raise ChunkError("Abort message too short")
            state = self._streams.get(int.from_bytes(message.payload[:4], "big"))
            if state is not None:
                self._drop_partial(state)


def _basic_header(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes(((fmt << 6) | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    rest = csid - 64
    return bytes(((fmt << 6) | 1, rest & 0xFF, rest >> 8))


class ChunkWriter:
    """RtmpMessage in, chunk bytes out: a type-0 chunk then type-3 continuations."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self._chunk_size = DEFAULT_CHUNK_SIZE
        self.set_chunk_size(chunk_size)

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    def set_chunk_size(self, size: int) -> None:
        """Use a new outbound chunk size (after sending Set Chunk Size to the peer)."""
        if not 1 <= size <= MAX_CHUNK_SIZE:
            raise ValueError(f"invalid chunk size {size}")
        self._chunk_size = size

    def write(self, message: RtmpMessage) -> bytes:
        """Serialise one message. Extended timestamps repeat on continuations."""
        csid = message.csid
        if not MIN_CSID <= csid <= MAX_CSID:
            raise ValueError(f"chunk stream id {csid} out of range")
        payload = message.payload
        length = len(payload)
        if length > MAX_MESSAGE_LENGTH:
            raise ValueError("message too long for one RTMP message")
        timestamp = message.timestamp & TIMESTAMP_MASK
        extended = timestamp >= EXTENDED_TIMESTAMP
        ext = timestamp.to_bytes(4, "big") if extended else b""
        out = bytearray(_basic_header(0, csid))
        out += (EXTENDED_TIMESTAMP if extended else timestamp).to_bytes(3, "big")
        out += length.to_bytes(3, "big")
        out.append(message.type_id)
        out += (message.stream_id & 0xFFFFFFFF).to_bytes(4, "little")
        out += ext
        size = self._chunk_size
        out += payload[:size]
        continuation = _basic_header(3, csid) + ext
        for offset in range(size, length, size):
            out += continuation
            out += payload[offset : offset + size]
        return bytes(out)
