"""Client side of an RTMP publish, as a pure state machine (no sockets), for egress.

connect -> releaseStream/FCPublish/createStream -> publish, then media messages. The
caller owns the socket: it sends `initial_bytes()`, feeds what the server says to
`receive_data()` (which returns events), and writes `data_to_send()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any
from urllib.parse import urlsplit

from edge_server.rtmp import amf0
from edge_server.rtmp.chunk import ChunkError, ChunkReader, ChunkWriter
from edge_server.rtmp.handshake import HANDSHAKE_SIZE, RTMP_VERSION
from edge_server.rtmp.messages import MessageType, RtmpMessage, UserControlEvent

OUT_CHUNK_SIZE = 4096
CSID_CONTROL, CSID_COMMAND, CSID_AUDIO, CSID_VIDEO, CSID_DATA = 2, 3, 4, 6, 5
FLASH_VERSION = "FMLE/3.0 (compatible; HikariEdge)"


class RtmpClientError(Exception):
    """The server refused or spoke nonsense; the message is safe to log (no stream key)."""


@dataclass(frozen=True)
class RtmpUrl:
    scheme: str
    host: str
    port: int
    app: str
    stream_name: str  # the platform's stream key, usually: never log it

    @property
    def tc_url(self) -> str:
        default = 443 if self.scheme == "rtmps" else 1935
        port = "" if self.port == default else f":{self.port}"
        return f"{self.scheme}://{self.host}{port}/{self.app}"


def parse_rtmp_url(url: str) -> RtmpUrl:
    """Split app and stream name the way ffmpeg and librtmp do: rtmp://host/app/key, and
    rtmp://host/app/instance/key where the key has no further slash."""
    parts = urlsplit(url)
    if parts.scheme not in ("rtmp", "rtmps") or not parts.hostname:
        raise RtmpClientError("target must be rtmp:// or rtmps:// with a host")
    path = parts.path.lstrip("/")
    first, slash, rest = path.partition("/")
    if not slash or not rest:
        raise RtmpClientError("target URL needs /<app>/<stream key>")
    second, slash2, tail = rest.partition("/")
    app, name = (f"{first}/{second}", tail) if slash2 and tail else (first, rest)
    if parts.query:
        name = f"{name}?{parts.query}"
    port = parts.port or (443 if parts.scheme == "rtmps" else 1935)
    return RtmpUrl(parts.scheme, parts.hostname, port, app, name)


class _State(Enum):
    HANDSHAKE = auto()
    CONNECTING = auto()
    CREATING_STREAM = auto()
    PUBLISHING = auto()
    PUBLISHED = auto()
    CLOSED = auto()


@dataclass(frozen=True)
class Published:
    stream_id: int


class RtmpPublishClient:
    def __init__(self, url: RtmpUrl, random_bytes=os.urandom) -> None:
        self.url = url
        self.state = _State.HANDSHAKE
        self.stream_id = 0
        self._c1 = bytes(8) + random_bytes(HANDSHAKE_SIZE - 8)
        self._handshake = bytearray()
        self._reader = ChunkReader()
        self._writer = ChunkWriter()
        self._out = bytearray()
        self._received = 0
        self._ack_window = 0
        self._acked = 0

    def initial_bytes(self) -> bytes:
        return bytes([RTMP_VERSION]) + self._c1

    @property
    def published(self) -> bool:
        return self.state is _State.PUBLISHED

    def data_to_send(self) -> bytes:
        data, self._out = bytes(self._out), bytearray()
        return data

    def receive_data(self, data: bytes) -> list[Published]:
        """Feed server bytes. Raises RtmpClientError on refusal or protocol errors."""
        if self.state is _State.CLOSED:
            return []
        self._received += len(data)
        if self.state is _State.HANDSHAKE:
            self._handshake += data
            need = 1 + 2 * HANDSHAKE_SIZE
            if len(self._handshake) < need:
                return []
            if self._handshake[0] != RTMP_VERSION:
                raise RtmpClientError(f"server speaks RTMP version {self._handshake[0]}")
            s1 = bytes(self._handshake[1 : 1 + HANDSHAKE_SIZE])
            data = bytes(self._handshake[need:])
            self._out += s1  # C2 echoes S1
            self._start_connect()
        events: list[Published] = []
        try:
            for message in self._reader.read_messages(data):
                events.extend(self._on_message(message))
        except (ChunkError, amf0.Amf0Error) as exc:
            raise RtmpClientError(f"bad data from server: {exc}") from None
        if self._ack_window and self._received - self._acked >= self._ack_window:
            self._acked = self._received
            self._send(MessageType.ACKNOWLEDGEMENT, CSID_CONTROL, 0, (self._received & 0xFFFFFFFF).to_bytes(4, "big"))
        return events

    def media(self, type_id: int, timestamp: int, payload: bytes) -> bytes:
        """Chunk one audio (8), video (9) or data (18) message for the published stream."""
        csid = {MessageType.AUDIO: CSID_AUDIO, MessageType.VIDEO: CSID_VIDEO}.get(type_id, CSID_DATA)
        return self._writer.write(RtmpMessage(type_id, self.stream_id, timestamp, payload, csid))

    def close_stream(self) -> bytes:
        """FCUnpublish + deleteStream, so the platform ends the broadcast cleanly."""
        if self.state is _State.PUBLISHED:
            self._command(0, "FCUnpublish", 6, None, self.url.stream_name)
            self._command(0, "deleteStream", 7, None, float(self.stream_id))
        self.state = _State.CLOSED
        return self.data_to_send()

    # -- internals ------------------------------------------------------------------

    def _start_connect(self) -> None:
        self.state = _State.CONNECTING
        self._send(MessageType.SET_CHUNK_SIZE, CSID_CONTROL, 0, OUT_CHUNK_SIZE.to_bytes(4, "big"))
        self._writer.set_chunk_size(OUT_CHUNK_SIZE)
        self._command(0, "connect", 1, {
            "app": self.url.app, "type": "nonprivate", "flashVer": FLASH_VERSION, "tcUrl": self.url.tc_url,
        })

    def _on_message(self, message: RtmpMessage) -> list[Published]:
        kind = message.type_id
        if kind == MessageType.WINDOW_ACK_SIZE and len(message.payload) >= 4:
            self._ack_window = int.from_bytes(message.payload[:4], "big")
        elif kind == MessageType.USER_CONTROL and len(message.payload) >= 6:
            if int.from_bytes(message.payload[:2], "big") == UserControlEvent.PING_REQUEST:
                body = UserControlEvent.PING_RESPONSE.to_bytes(2, "big") + message.payload[2:6]
                self._send(MessageType.USER_CONTROL, CSID_CONTROL, 0, body)
        elif kind == MessageType.COMMAND_AMF0:
            return self._on_command(amf0.decode_all(message.payload))
        return []

    def _on_command(self, values: list[Any]) -> list[Published]:
        if not values or not isinstance(values[0], str):
            return []
        name, transaction = values[0], values[1] if len(values) > 1 else 0
        info = values[3] if len(values) > 3 and isinstance(values[3], dict) else {}
        if name == "_error":
            raise RtmpClientError(f"server refused: {info.get('code', '?')} {info.get('description', '')}".strip())
        if name == "_result" and transaction == 1 and self.state is _State.CONNECTING:
            self.state = _State.CREATING_STREAM
            self._command(0, "releaseStream", 2, None, self.url.stream_name)
            self._command(0, "FCPublish", 3, None, self.url.stream_name)
            self._command(0, "createStream", 4, None)
        elif name == "_result" and transaction == 4 and self.state is _State.CREATING_STREAM:
            if len(values) < 4 or not isinstance(values[3], (int, float)):
                raise RtmpClientError("createStream result carries no stream id")
            self.stream_id = int(values[3])
            self.state = _State.PUBLISHING
            self._command(self.stream_id, "publish", 5, None, self.url.stream_name, "live")
        elif name == "onStatus":
            code = str(info.get("code", ""))
            if code == "NetStream.Publish.Start" and self.state is _State.PUBLISHING:
                self.state = _State.PUBLISHED
                return [Published(self.stream_id)]
            if info.get("level") == "error" or code in ("NetStream.Publish.BadName", "NetStream.Publish.Denied"):
                raise RtmpClientError(f"publish refused: {code} {info.get('description', '')}".strip())
        return []

    def _command(self, stream_id: int, name: str, transaction: int, *args: Any) -> None:
        payload = amf0.encode(name, float(transaction), *args)
        self._out += self._writer.write(RtmpMessage(MessageType.COMMAND_AMF0, stream_id, 0, payload, CSID_COMMAND))

    def _send(self, type_id: int, csid: int, stream_id: int, payload: bytes) -> None:
        self._out += self._writer.write(RtmpMessage(type_id, stream_id, 0, payload, csid))
