"""RTMP message type numbers, the message value the chunk layer carries, and the
events the server connection state machine returns.

Events are plain frozen dataclasses so that the asyncio adapter (and tests) can match
on them without knowing anything about chunks or AMF.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeAlias


class MessageType(IntEnum):
    """RTMP message type ids (RTMP spec 5.4 and 7.1)."""

    SET_CHUNK_SIZE = 1
    ABORT = 2
    ACKNOWLEDGEMENT = 3
    USER_CONTROL = 4
    WINDOW_ACK_SIZE = 5
    SET_PEER_BANDWIDTH = 6
    AUDIO = 8
    VIDEO = 9
    DATA_AMF3 = 15
    SHARED_OBJECT_AMF3 = 16
    COMMAND_AMF3 = 17
    DATA_AMF0 = 18
    SHARED_OBJECT_AMF0 = 19
    COMMAND_AMF0 = 20
    AGGREGATE = 22


class UserControlEvent(IntEnum):
    """User Control message event types (RTMP spec 7.1.7)."""

    STREAM_BEGIN = 0
    STREAM_EOF = 1
    STREAM_DRY = 2
    SET_BUFFER_LENGTH = 3
    STREAM_IS_RECORDED = 4
    PING_REQUEST = 6
    PING_RESPONSE = 7


@dataclass(frozen=True, slots=True)
class RtmpMessage:
    """One complete RTMP message as reassembled from (or split into) chunks.

    `timestamp` is unsigned 32-bit milliseconds; `csid` is the chunk stream it
    travelled on (2..65599).
    """

    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes = field(repr=False)
    csid: int = 3


# ---------------------------------------------------------------------------
# Events returned by RtmpServerConnection.receive_data
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """C2 arrived: the peer speaks RTMP; the chunk layer starts now."""


@dataclass(frozen=True, slots=True)
class Connected:
    """The client's `connect` command was accepted (replies already queued)."""

    app: str
    tc_url: str = field(repr=False)  # may carry auth tokens in its query


@dataclass(frozen=True, slots=True)
class PublishRequested:
    """The client wants to publish; answer with accept_publish or reject_publish."""

    stream_id: int
    app: str
    stream_key: str = field(repr=False)
    publish_type: str
    tc_url: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class PublishEnded:
    """The publisher said it is done (FCUnpublish, closeStream or deleteStream)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class MetadataReceived:
    """`@setDataFrame`/`onMetaData` on a publishing stream."""

    metadata: dict[str, Any]
    stream_id: int = 1


@dataclass(frozen=True, slots=True)
class AudioReceived:
    """An audio message (FLV audio tag body) on a publishing stream."""

    timestamp: int
    payload: bytes = field(repr=False)
    stream_id: int = 1


@dataclass(frozen=True, slots=True)
class VideoReceived:
    """A video message (FLV video tag body) on a publishing stream."""

    timestamp: int
    payload: bytes = field(repr=False)
    stream_id: int = 1


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The peer broke the protocol; the connection is dead and should be closed.

    `reason` never contains peer-supplied strings (stream keys stay out of logs).
    """

    reason: str


Event: TypeAlias = (
    HandshakeCompleted
    | Connected
    | PublishRequested
    | PublishEnded
    | MetadataReceived
    | AudioReceived
    | VideoReceived
    | ProtocolError
)
