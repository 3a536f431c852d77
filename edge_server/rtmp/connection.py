"""Server side of one RTMP connection as a sans-I/O state machine (aioquic/h11 style).

The owner feeds socket bytes to receive_data(), acts on the returned events, and writes
data_to_send() to the socket. Nothing here touches a socket, a clock or a logger, so
every corner can be unit-tested with split and hostile input.

Scope: ingest only (publish). Play requests are not served.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any, Final

from edge_server.rtmp import amf0
from edge_server.rtmp.chunk import (
    DEFAULT_MAX_CHUNK_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    ChunkError,
    ChunkReader,
    ChunkWriter,
)
from edge_server.rtmp.handshake import HandshakeError, ServerHandshake
from edge_server.rtmp.messages import (
    AudioReceived,
    Connected,
    Event,
    HandshakeCompleted,
    MessageType,
    MetadataReceived,
    ProtocolError,
    PublishEnded,
    PublishRequested,
    RtmpMessage,
    UserControlEvent,
    VideoReceived,
)

__all__ = ["RtmpServerConnection"]

# Chunk stream ids we send on: protocol control, connection commands, stream commands.
CSID_CONTROL: Final = 2
CSID_COMMAND: Final = 3
CSID_STREAM_COMMAND: Final = 5

DEFAULT_OUT_CHUNK_SIZE: Final = 4096
DEFAULT_WINDOW_ACK_SIZE: Final = 2_500_000
PEER_BANDWIDTH_DYNAMIC: Final = 2
MAX_STREAMS: Final = 64  # createStream calls honoured per connection

FMS_VERSION: Final = "FMS/3,0,1,123"
FMS_CAPABILITIES: Final = 31.0

_U32 = struct.Struct(">I")


class _Violation(Exception):
    """Internal: the peer broke the protocol; carries a log-safe reason."""


class _StreamState(Enum):
    CREATED = auto()
    PUBLISH_PENDING = auto()
    PUBLISHING = auto()
    ENDED = auto()


@dataclass(slots=True)
class _Stream:
    state: _StreamState = _StreamState.CREATED
    stream_key: str = ""


class RtmpServerConnection:
    """One client connection, server side. See the module docstring."""

    def __init__(
        self,
        *,
        chunk_size: int = DEFAULT_OUT_CHUNK_SIZE,
        window_ack_size: int = DEFAULT_WINDOW_ACK_SIZE,
        peer_bandwidth: int = DEFAULT_WINDOW_ACK_SIZE,
        max_chunk_size: int = DEFAULT_MAX_CHUNK_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._handshake = ServerHandshake(random_bytes=random_bytes)
        self._reader = ChunkReader(max_chunk_size=max_chunk_size, max_message_size=max_message_size)
        self._writer = ChunkWriter()
        self._out = bytearray()
        self._out_chunk_size = chunk_size
        self._window_ack_size = window_ack_size
        self._peer_bandwidth = peer_bandwidth
        # We acknowledge with the client's window once it sends one; until then with
        # the window we announce (what nginx-rtmp does).
        self._ack_window = window_ack_size
        self._last_ack = 0
        self.bytes_received = 0
        self.closed = False
        self.connected = False
        self.app = ""
        self.tc_url = ""
        self._streams: dict[int, _Stream] = {}
        self._next_stream_id = 1
        self._paused_for: int | None = None  # stream id whose publish awaits the owner

    # -- public API ---------------------------------------------------------

    @property
    def handshake_complete(self) -> bool:
        return self._handshake.done

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer; returns the events they complete.

        Never raises on bad input: it returns a ProtocolError event last, after which
        the connection is closed and further input is ignored. While a publish awaits
        accept_publish/reject_publish, input is only buffered (see accept_publish).
        """
        if self.closed or not data:
            return []
        self.bytes_received += len(data)
        events: list[Event] = []
        try:
            self._receive(bytes(data), events)
        except (_Violation, ChunkError, HandshakeError, amf0.Amf0Error) as exc:
            self._fail(exc, events)
        return events

    def data_to_send(self) -> bytes:
        """Drain the bytes queued for the peer."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def accept_publish(self, stream_id: int) -> list[Event]:
        """Start the pending publish: StreamBegin + NetStream.Publish.Start on its stream.

        Input that arrived while the decision was pending (clients may pipeline the
        AVC sequence header right after `publish`) is processed now; its events are
        returned and must be handled like receive_data's.
        """
        stream = self._pending_stream(stream_id)
        stream.state = _StreamState.PUBLISHING
        self._send_user_control(UserControlEvent.STREAM_BEGIN, stream_id)
        self._send_on_status(stream_id, "status", "NetStream.Publish.Start", "Start publishing")
        return self._resume()

    def reject_publish(
        self,
        stream_id: int,
        code: str = "NetStream.Publish.BadName",
        description: str = "Publish rejected",
    ) -> list[Event]:
        """Refuse the pending publish with an error onStatus; the owner then closes.

        Returns the events of input buffered meanwhile, as accept_publish does.
        """
        stream = self._pending_stream(stream_id)
        stream.state = _StreamState.ENDED
        self._send_on_status(stream_id, "error", code, description)
        return self._resume()

    @property
    def publish_pending(self) -> bool:
        """True between a PublishRequested event and the owner's answer."""
        return self._paused_for is not None

    def is_publishing(self, stream_id: int) -> bool:
        stream = self._streams.get(stream_id)
        return stream is not None and stream.state is _StreamState.PUBLISHING

    # -- input --------------------------------------------------------------

    def _fail(self, exc: Exception, events: list[Event]) -> None:
        self.closed = True
        events.append(ProtocolError(str(exc) or type(exc).__name__))

    def _resume(self) -> list[Event]:
        self._paused_for = None
        events: list[Event] = []
        if self.closed:
            return events
        try:
            self._process(events)
        except (_Violation, ChunkError, amf0.Amf0Error) as exc:
            self._fail(exc, events)
        return events

    def _receive(self, data: bytes, events: list[Event]) -> None:
        if not self._handshake.done:
            data = self._handshake.receive_data(data)
            self._out += self._handshake.data_to_send()
            if not self._handshake.done:
                return
            events.append(HandshakeCompleted())
        if data:
            self._reader.receive_data(data)
        self._process(events)
        self._maybe_acknowledge()

    def _process(self, events: list[Event]) -> None:
        """Turn buffered chunks into events, stopping while a publish is pending."""
        while self._paused_for is None and (message := self._reader.next_message()) is not None:
            self._on_message(message, events)

    def _maybe_acknowledge(self) -> None:
        if self._ack_window and self.bytes_received - self._last_ack >= self._ack_window:
            self._last_ack = self.bytes_received
            self._send_control(MessageType.ACKNOWLEDGEMENT, _U32.pack(self.bytes_received & 0xFFFFFFFF))

    def _on_message(self, message: RtmpMessage, events: list[Event]) -> None:
        type_id = message.type_id
        if type_id == MessageType.AUDIO or type_id == MessageType.VIDEO:
            self._on_media(message, events)
        elif type_id in (MessageType.DATA_AMF0, MessageType.DATA_AMF3):
            self._on_data(message, events)
        elif type_id in (MessageType.COMMAND_AMF0, MessageType.COMMAND_AMF3):
            self._on_command(message, events)
        elif type_id == MessageType.USER_CONTROL:
            self._on_user_control(message.payload)
        elif type_id == MessageType.WINDOW_ACK_SIZE:
            if len(message.payload) < 4:
                raise _Violation("Window Acknowledgement Size message too short")
            self._ack_window = _U32.unpack_from(message.payload)[0]
        elif type_id == MessageType.AGGREGATE:
            for sub in _split_aggregate(message):
                if sub.type_id in (MessageType.AUDIO, MessageType.VIDEO):
                    self._on_media(sub, events)
                elif sub.type_id in (MessageType.DATA_AMF0, MessageType.DATA_AMF3):
                    self._on_data(sub, events)
        # Set Chunk Size and Abort were applied by the chunk reader; Acknowledgement,
        # Set Peer Bandwidth and shared objects mean nothing to an ingest server.

    def _on_media(self, message: RtmpMessage, events: list[Event]) -> None:
        if not self.is_publishing(message.stream_id):
            return  # media before publish (or after it ended) is ignored
        if message.type_id == MessageType.AUDIO:
            events.append(AudioReceived(message.timestamp, message.payload, message.stream_id))
        else:
            events.append(VideoReceived(message.timestamp, message.payload, message.stream_id))

    def _on_data(self, message: RtmpMessage, events: list[Event]) -> None:
        if not self.is_publishing(message.stream_id):
            return
        try:
            values = amf0.decode_all(_amf0_body(message))
        except amf0.Amf0Error:
            return  # broken metadata is not worth dropping the stream over
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            events.append(MetadataReceived(dict(values[1]), message.stream_id))

    def _on_user_control(self, payload: bytes) -> None:
        if len(payload) < 2:
            raise _Violation("User Control message too short")
        event_type = int.from_bytes(payload[:2], "big")
        if event_type == UserControlEvent.PING_REQUEST:
            if len(payload) < 6:
                raise _Violation("PingRequest too short")
            self._send_control(
                MessageType.USER_CONTROL,
                UserControlEvent.PING_RESPONSE.to_bytes(2, "big") + payload[2:6],
            )

    # -- commands -----------------------------------------------------------

    def _on_command(self, message: RtmpMessage, events: list[Event]) -> None:
        values = amf0.decode_all(_amf0_body(message))
        if not values or not isinstance(values[0], str):
            raise _Violation("command without a name")
        name = values[0]
        txn = _transaction_id(values[1] if len(values) > 1 else None)
        args = values[2:]
        if not self.connected:
            if name != "connect":
                raise _Violation("command before connect")
            self._on_connect(txn, args, events)
            return
        handler = _COMMANDS.get(name)
        if handler is not None:
            handler(self, message.stream_id, txn, args, events)
        elif name == "connect":
            raise _Violation("duplicate connect")
        elif txn > 0:
            self._send_command(
                CSID_COMMAND,
                0,
                "_error",
                txn,
                None,
                _status("error", "NetConnection.Call.Failed", "Method not found"),
            )

    def _on_connect(self, txn: float, args: list[Any], events: list[Event]) -> None:
        command_object = args[0] if args and isinstance(args[0], dict) else {}
        self.app = _as_str(command_object.get("app"))
        self.tc_url = _as_str(command_object.get("tcUrl"))
        encoding = command_object.get("objectEncoding", 0.0)
        object_encoding = float(encoding) if _is_number(encoding) else 0.0
        self.connected = True

        self._send_control(MessageType.WINDOW_ACK_SIZE, _U32.pack(self._window_ack_size))
        self._send_control(
            MessageType.SET_PEER_BANDWIDTH,
            _U32.pack(self._peer_bandwidth) + bytes((PEER_BANDWIDTH_DYNAMIC,)),
        )
        self._send_control(MessageType.SET_CHUNK_SIZE, _U32.pack(self._out_chunk_size))
        self._writer.set_chunk_size(self._out_chunk_size)
        info = _status("status", "NetConnection.Connect.Success", "Connection succeeded.")
        info["objectEncoding"] = object_encoding
        self._send_command(
            CSID_COMMAND,
            0,
            "_result",
            txn,
            {"fmsVer": FMS_VERSION, "capabilities": FMS_CAPABILITIES, "mode": 1.0},
            info,
        )
        events.append(Connected(self.app, self.tc_url))

    def _reply_result(self, txn: float, *values: Any) -> None:
        if txn > 0:
            self._send_command(CSID_COMMAND, 0, "_result", txn, None, *values)

    def _cmd_acknowledge(self, stream_id: int, txn: float, args: list[Any], events: list[Event]) -> None:
        """releaseStream / FCPublish: nothing to do but answer."""
        self._reply_result(txn)

    def _cmd_create_stream(self, stream_id: int, txn: float, args: list[Any], events: list[Event]) -> None:
        if len(self._streams) >= MAX_STREAMS:
            raise _Violation("too many streams")
        new_id = self._next_stream_id
        self._next_stream_id += 1
        self._streams[new_id] = _Stream()
        self._send_command(CSID_COMMAND, 0, "_result", txn, None, float(new_id))

    def _cmd_publish(self, stream_id: int, txn: float, args: list[Any], events: list[Event]) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise _Violation(f"publish on unknown stream {stream_id}")
        if stream.state in (_StreamState.PUBLISH_PENDING, _StreamState.PUBLISHING):
            raise _Violation(f"publish twice on stream {stream_id}")
        key = args[1] if len(args) > 1 else None
        if not isinstance(key, str) or not key:
            stream.state = _StreamState.ENDED
            self._send_on_status(stream_id, "error", "NetStream.Publish.BadName", "Missing stream name")
            return
        publish_type = args[2] if len(args) > 2 and isinstance(args[2], str) else "live"
        stream.state = _StreamState.PUBLISH_PENDING
        stream.stream_key = key
        events.append(PublishRequested(stream_id, self.app, key, publish_type, self.tc_url))
        self._paused_for = stream_id

    def _cmd_fc_unpublish(self, stream_id: int, txn: float, args: list[Any], events: list[Event]) -> None:
        key = args[1] if len(args) > 1 else None
        for sid, stream in self._streams.items():
            if stream.state is _StreamState.PUBLISHING and (key is None or stream.stream_key == key):
                self._end_publish(sid, events)
        self._reply_result(txn)

    def _cmd_delete_stream(self, stream_id: int, txn: float, args: list[Any], events: list[Event]) -> None:
        target: Any = args[1] if len(args) > 1 else None
        sid = int(target) if _is_number(target) and 0 <= target < 2**32 else stream_id
        self._end_publish(sid, events)
        self._streams.pop(sid, None)

    def _cmd_close_stream(self, stream_id: int, txn: float, args: list[Any], events: list[Event]) -> None:
        self._end_publish(stream_id, events)

    def _end_publish(self, stream_id: int, events: list[Event]) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if stream.state in (_StreamState.PUBLISHING, _StreamState.PUBLISH_PENDING):
            events.append(PublishEnded(stream_id))
        stream.state = _StreamState.ENDED

    def _pending_stream(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None or stream.state is not _StreamState.PUBLISH_PENDING:
            raise ValueError(f"no publish pending on stream {stream_id}")
        return stream

    # -- output -------------------------------------------------------------

    def _send(self, message: RtmpMessage) -> None:
        self._out += self._writer.write(message)

    def _send_control(self, type_id: int, payload: bytes) -> None:
        self._send(RtmpMessage(type_id, 0, 0, payload, CSID_CONTROL))

    def _send_user_control(self, event: UserControlEvent, value: int) -> None:
        self._send_control(MessageType.USER_CONTROL, event.to_bytes(2, "big") + _U32.pack(value))

    def _send_command(self, csid: int, stream_id: int, *values: Any) -> None:
        self._send(RtmpMessage(MessageType.COMMAND_AMF0, stream_id, 0, amf0.encode(*values), csid))

    def _send_on_status(self, stream_id: int, level: str, code: str, description: str) -> None:
        info = _status(level, code, description)
        self._send_command(CSID_STREAM_COMMAND, stream_id, "onStatus", 0.0, None, info)


_COMMANDS: dict[str, Callable[[RtmpServerConnection, int, float, list[Any], list[Event]], None]] = {
    "releaseStream": RtmpServerConnection._cmd_acknowledge,
    "FCPublish": RtmpServerConnection._cmd_acknowledge,
    "createStream": RtmpServerConnection._cmd_create_stream,
    "publish": RtmpServerConnection._cmd_publish,
    "FCUnpublish": RtmpServerConnection._cmd_fc_unpublish,
    "deleteStream": RtmpServerConnection._cmd_delete_stream,
    "closeStream": RtmpServerConnection._cmd_close_stream,
}


def _status(level: str, code: str, description: str) -> dict[str, Any]:
    return {"level": level, "code": code, "description": description}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _transaction_id(value: Any) -> float:
    return float(value) if _is_number(value) else 0.0


def _as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _amf0_body(message: RtmpMessage) -> bytes:
    """AMF3 command/data messages (17/15) carry AMF0 after a leading format byte 0."""
    payload = message.payload
    if message.type_id in (MessageType.COMMAND_AMF3, MessageType.DATA_AMF3) and payload[:1] == b"\x00":
        return payload[1:]
    return payload


def _split_aggregate(message: RtmpMessage) -> list[RtmpMessage]:
    """Unpack an aggregate message (FLV tags with back pointers), rebasing timestamps."""
    data = message.payload
    parts: list[RtmpMessage] = []
    pos = 0
    base: int | None = None
    while pos + 11 <= len(data):
        type_id = data[pos]
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
        body_start = pos + 11
        body_end = body_start + size
        if body_end + 4 > len(data):
            raise _Violation("truncated aggregate message")
        if base is None:
            base = ts
        timestamp = (message.timestamp + ts - base) & 0xFFFFFFFF
        parts.append(
            RtmpMessage(type_id, message.stream_id, timestamp, data[body_start:body_end], message.csid)
        )
        pos = body_end + 4
    if pos != len(data):
        raise _Violation("trailing bytes in aggregate message")
    return parts
