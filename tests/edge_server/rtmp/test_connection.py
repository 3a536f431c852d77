"""RtmpServerConnection: whole conversations, split input, replies, hostile input."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from edge_server.rtmp import amf0
from edge_server.rtmp.chunk import ChunkReader, ChunkWriter
from edge_server.rtmp.connection import RtmpServerConnection
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

KEY = "sk_live_secret"
TC_URL = "rtmp://127.0.0.1/live"
C1 = bytes((i * 7) & 0xFF for i in range(1536))
C2 = bytes((i * 13) & 0xFF for i in range(1536))
HANDSHAKE = b"\x03" + C1 + C2


def fixed_random(n: int) -> bytes:
    return b"\x5a" * n


def new_connection(**kwargs: Any) -> RtmpServerConnection:
    return RtmpServerConnection(random_bytes=fixed_random, **kwargs)


class Client:
    """Builds the bytes an RTMP publisher sends (the way ffmpeg lays them out)."""

    def __init__(self) -> None:
        self.writer = ChunkWriter()

    def send(self, type_id: int, payload: bytes, *, stream_id: int = 0, csid: int = 3, ts: int = 0) -> bytes:
        return self.writer.write(RtmpMessage(type_id, stream_id, ts, payload, csid))

    def command(self, name: str, txn: float, *args: Any, stream_id: int = 0, csid: int = 3) -> bytes:
        body = amf0.encode(name, txn, *args)
        return self.send(MessageType.COMMAND_AMF0, body, stream_id=stream_id, csid=csid)

    def connect(self, txn: float = 1.0, **extra: Any) -> bytes:
        obj = {"app": "live", "type": "nonprivate", "flashVer": "FMLE/3.0", "tcUrl": TC_URL, **extra}
        return self.command("connect", txn, obj)

    def set_chunk_size(self, size: int) -> bytes:
        data = self.send(MessageType.SET_CHUNK_SIZE, size.to_bytes(4, "big"), csid=2)
        self.writer.set_chunk_size(size)
        return data

    def metadata(self, meta: dict[str, Any], stream_id: int = 1) -> bytes:
        body = amf0.encode("@setDataFrame", "onMetaData", amf0.EcmaArray(meta))
        return self.send(MessageType.DATA_AMF0, body, stream_id=stream_id, csid=4)

    def video(self, ts: int, payload: bytes, stream_id: int = 1) -> bytes:
        return self.send(MessageType.VIDEO, payload, stream_id=stream_id, csid=6, ts=ts)

    def audio(self, ts: int, payload: bytes, stream_id: int = 1) -> bytes:
        return self.send(MessageType.AUDIO, payload, stream_id=stream_id, csid=4, ts=ts)

    def ping(self, value: int) -> bytes:
        body = UserControlEvent.PING_REQUEST.to_bytes(2, "big") + value.to_bytes(4, "big")
        return self.send(MessageType.USER_CONTROL, body, csid=2)

    def start_publish(self) -> bytes:
        """Everything up to (and including) the publish command."""
        return (
            self.set_chunk_size(300)
            + self.connect()
            + self.command("releaseStream", 2.0, None, KEY)
            + self.command("FCPublish", 3.0, None, KEY)
            + self.command("createStream", 4.0, None)
            + self.command("publish", 5.0, None, KEY, "live", stream_id=1, csid=8)
        )


META = {"width": 320.0, "height": 240.0, "framerate": 30.0, "encoder": "test"}
VIDEO_FRAMES = [
    (0, b"\x17\x00" + bytes(40)),
    (33, b"\x27\x01" + bytes(range(256)) * 3),
    (66, b"\x27\x01" + b"v" * 500),
]
AUDIO_FRAMES = [(0, b"\xaf\x00\x12\x10"), (23, b"\xaf\x01" + b"a" * 200)]


def publish_conversation() -> bytes:
    """A complete publish session as one byte string."""
    client = Client()
    data = HANDSHAKE + client.start_publish() + client.metadata(META)
    data += client.video(*VIDEO_FRAMES[0]) + client.audio(*AUDIO_FRAMES[0])
    data += client.video(*VIDEO_FRAMES[1]) + client.ping(12345) + client.audio(*AUDIO_FRAMES[1])
    data += client.video(*VIDEO_FRAMES[2])
    data += client.command("FCUnpublish", 6.0, None, KEY)
    data += client.command("deleteStream", 7.0, None, 1.0)
    return data


EXPECTED_EVENTS: list[Event] = [
    HandshakeCompleted(),
    Connected("live", TC_URL),
    PublishRequested(1, "live", KEY, "live", TC_URL),
    MetadataReceived(META, 1),
    VideoReceived(*VIDEO_FRAMES[0], 1),
    AudioReceived(*AUDIO_FRAMES[0], 1),
    VideoReceived(*VIDEO_FRAMES[1], 1),
    AudioReceived(*AUDIO_FRAMES[1], 1),
    VideoReceived(*VIDEO_FRAMES[2], 1),
    PublishEnded(1),
]


def feed(conn: RtmpServerConnection, data: bytes, *, accept: bool = True) -> list[Event]:
    """Feed data and answer publish requests the way the server adapter does."""
    events = conn.receive_data(data)
    out: list[Event] = []
    while events:
        event = events.pop(0)
        out.append(event)
        if isinstance(event, PublishRequested):
            more = conn.accept_publish(event.stream_id) if accept else conn.reject_publish(event.stream_id)
            events = more + events
    return out


def run_pieces(pieces: list[bytes]) -> tuple[list[Event], bytes]:
    conn = new_connection()
    events: list[Event] = []
    out = b""
    for piece in pieces:
        events += feed(conn, piece)
        out += conn.data_to_send()
    return events, out


def decode_replies(out: bytes) -> list[RtmpMessage]:
    """Parse what the server sent, as a client would."""
    assert out[:1] == b"\x03"
    return ChunkReader().read_messages(out[1 + 2 * 1536 :])


def commands(messages: list[RtmpMessage]) -> list[tuple[int, int, list[Any]]]:
    return [
        (m.stream_id, m.csid, amf0.decode_all(m.payload))
        for m in messages
        if m.type_id == MessageType.COMMAND_AMF0
    ]


# -- the happy path ----------------------------------------------------------------


def test_publish_conversation_events() -> None:
    events, _ = run_pieces([publish_conversation()])
    assert events == EXPECTED_EVENTS
    assert "sk_live" not in repr(events[2])
    assert "rtmp://" not in repr(events[1]) + repr(events[2])  # tcUrl may carry tokens


def test_server_replies_to_a_publish_conversation() -> None:
    _, out = run_pieces([publish_conversation()])
    assert out[1 + 1536 : 1 + 2 * 1536] == C1  # S2 echoes C1
    replies = decode_replies(out)
    kinds = [m.type_id for m in replies]
    assert kinds[:4] == [
        MessageType.WINDOW_ACK_SIZE,
        MessageType.SET_PEER_BANDWIDTH,
        MessageType.SET_CHUNK_SIZE,
        MessageType.COMMAND_AMF0,
    ]
    assert replies[0].payload == (2_500_000).to_bytes(4, "big")
    assert replies[1].payload == (2_500_000).to_bytes(4, "big") + b"\x02"
    assert replies[2].payload == (4096).to_bytes(4, "big")
    assert all(m.csid == 2 and m.stream_id == 0 for m in replies[:3])

    cmds = commands(replies)
    name, txn, props, info = cmds[0][2]
    assert (name, txn) == ("_result", 1.0)
    assert props["fmsVer"].startswith("FMS/") and props["capabilities"] == 31.0
    assert info["code"] == "NetConnection.Connect.Success" and info["objectEncoding"] == 0.0
    assert [c[2][:2] for c in cmds[1:4]] == [["_result", 2.0], ["_result", 3.0], ["_result", 4.0]]
    assert cmds[3][2] == ["_result", 4.0, None, 1.0]  # createStream -> stream id 1
    on_status = cmds[4]
    assert on_status[0] == 1, "onStatus must travel on the publishing message stream"
    assert on_status[1] != 2
    assert on_status[2][0] == "onStatus" and on_status[2][3]["code"] == "NetStream.Publish.Start"
    assert KEY not in repr(on_status)

    stream_begin = [m for m in replies if m.type_id == MessageType.USER_CONTROL][0]
    assert stream_begin.payload == b"\x00\x00" + (1).to_bytes(4, "big")
    assert replies.index(stream_begin) < replies.index([m for m in replies if m.stream_id == 1][0])
    pong = [m for m in replies if m.type_id == MessageType.USER_CONTROL][1]
    assert pong.payload == b"\x00\x07" + (12345).to_bytes(4, "big")
    assert cmds[5][2][:2] == ["_result", 6.0]  # FCUnpublish


def test_byte_by_byte_gives_identical_events_and_replies() -> None:
    data = publish_conversation()
    expected = run_pieces([data])
    assert run_pieces([data[i : i + 1] for i in range(len(data))]) == expected


def test_every_two_piece_split_gives_identical_events_and_replies() -> None:
    data = publish_conversation()
    expected = run_pieces([data])
    for i in range(1, len(data)):
        assert run_pieces([data[:i], data[i:]]) == expected, f"split at {i}"


def test_bytes_received_counts_everything() -> None:
    data = publish_conversation()
    conn = new_connection()
    feed(conn, data)
    assert conn.bytes_received == len(data)


# -- publish decisions --------------------------------------------------------------


def test_input_is_held_while_publish_is_pending() -> None:
    client = Client()
    conn = new_connection()
    data = HANDSHAKE + client.start_publish() + client.video(0, b"\x17\x00seq") + client.audio(0, b"\xaf\x00")
    events = conn.receive_data(data)
    assert isinstance(events[-1], PublishRequested)
    assert conn.publish_pending
    assert conn.receive_data(client.video(33, b"\x27\x01")) == []
    held = conn.accept_publish(1)
    assert held == [
        VideoReceived(0, b"\x17\x00seq", 1),
        AudioReceived(0, b"\xaf\x00", 1),
        VideoReceived(33, b"\x27\x01", 1),
    ]
    assert not conn.publish_pending
    with pytest.raises(ValueError):
        conn.accept_publish(1)


def test_media_before_publish_is_ignored() -> None:
    client = Client()
    conn = new_connection()
    data = HANDSHAKE + client.connect() + client.command("createStream", 2.0, None)
    data += client.video(0, b"early") + client.audio(0, b"early") + client.metadata(META)
    events = feed(conn, data)
    assert [type(e) for e in events] == [HandshakeCompleted, Connected]


def test_reject_publish_sends_error_on_the_stream_and_ignores_media() -> None:
    client = Client()
    conn = new_connection()
    events = feed(conn, HANDSHAKE + client.start_publish(), accept=False)
    assert isinstance(events[-1], PublishRequested)
    assert feed(conn, client.video(0, b"x")) == []
    status = commands(decode_replies(conn.data_to_send()))[-1]
    assert status[0] == 1
    assert status[2][3]["level"] == "error" and status[2][3]["code"] == "NetStream.Publish.BadName"


def test_reject_publish_with_custom_code() -> None:
    client = Client()
    conn = new_connection()
    conn.receive_data(HANDSHAKE + client.start_publish())
    conn.reject_publish(1, "NetStream.Publish.Denied", "not today")
    info = commands(decode_replies(conn.data_to_send()))[-1][2][3]
    assert (info["code"], info["description"]) == ("NetStream.Publish.Denied", "not today")


@pytest.mark.parametrize(
    "ending",
    [
        [("FCUnpublish", (None, KEY), 0)],
        [("closeStream", (None,), 1)],
        [("deleteStream", (None, 1.0), 0)],
        [("FCUnpublish", (None, KEY), 0), ("closeStream", (None,), 1), ("deleteStream", (None, 1.0), 0)],
    ],
)
def test_publish_ends_exactly_once(ending: list[tuple[str, tuple[Any, ...], int]]) -> None:
    client = Client()
    conn = new_connection()
    feed(conn, HANDSHAKE + client.start_publish())
    data = b"".join(client.command(name, 0.0, *args, stream_id=sid) for name, args, sid in ending)
    data += client.video(100, b"late")
    assert feed(conn, data) == [PublishEnded(1)]
    assert not conn.is_publishing(1)


def test_missing_stream_name_is_rejected_without_event() -> None:
    client = Client()
    conn = new_connection()
    data = HANDSHAKE + client.connect() + client.command("createStream", 2.0, None)
    data += client.command("publish", 0.0, None, "", "live", stream_id=1)
    assert [type(e) for e in feed(conn, data)] == [HandshakeCompleted, Connected]
    info = commands(decode_replies(conn.data_to_send()))[-1][2][3]
    assert info["level"] == "error"


def test_metadata_without_set_data_frame_and_amf3_variants() -> None:
    client = Client()
    conn = new_connection()
    feed(conn, HANDSHAKE + client.start_publish())
    plain = client.send(MessageType.DATA_AMF0, amf0.encode("onMetaData", {"a": 1.0}), stream_id=1, csid=4)
    amf3 = client.send(
        MessageType.DATA_AMF3, b"\x00" + amf0.encode("onMetaData", {"b": 2.0}), stream_id=1, csid=4
    )
    other = client.send(MessageType.DATA_AMF0, amf0.encode("onTextData", {"t": "x"}), stream_id=1, csid=4)
    broken = client.send(MessageType.DATA_AMF0, b"\x02\x00\x50abc", stream_id=1, csid=4)
    assert feed(conn, plain + amf3 + other + broken) == [
        MetadataReceived({"a": 1.0}, 1),
        MetadataReceived({"b": 2.0}, 1),
    ]
    assert not conn.closed


def test_amf3_command_message() -> None:
    client = Client()
    conn = new_connection()
    body = b"\x00" + amf0.encode("connect", 1.0, {"app": "live", "tcUrl": TC_URL, "objectEncoding": 3.0})
    events = feed(conn, HANDSHAKE + client.send(MessageType.COMMAND_AMF3, body))
    assert events[-1] == Connected("live", TC_URL)
    info = commands(decode_replies(conn.data_to_send()))[0][2][3]
    assert info["objectEncoding"] == 3.0


def test_aggregate_message_is_split_into_media() -> None:
    client = Client()
    conn = new_connection()
    feed(conn, HANDSHAKE + client.start_publish())

    def tag(type_id: int, ts: int, body: bytes) -> bytes:
        header = bytes([type_id]) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big")
        header += bytes([ts >> 24]) + b"\x00\x00\x00"
        return header + body + (11 + len(body)).to_bytes(4, "big")

    agg = tag(9, 1000, b"v1") + tag(8, 1010, b"a1") + tag(9, 1033, b"v2")
    events = feed(conn, client.send(MessageType.AGGREGATE, agg, stream_id=1, csid=6, ts=500))
    assert events == [
        VideoReceived(500, b"v1", 1),
        AudioReceived(510, b"a1", 1),
        VideoReceived(533, b"v2", 1),
    ]
    events = feed(conn, client.send(MessageType.AGGREGATE, agg[:-3], stream_id=1, csid=6, ts=600))
    assert isinstance(events[-1], ProtocolError)


def test_extended_timestamps_reach_events() -> None:
    client = Client()
    conn = new_connection()
    feed(conn, HANDSHAKE + client.start_publish())
    ts = 0x01000000 + 7
    assert feed(conn, client.video(ts, b"x" * 1000)) == [VideoReceived(ts, b"x" * 1000, 1)]


def test_abort_message_mid_media() -> None:
    client = Client()
    conn = new_connection()
    feed(conn, HANDSHAKE + client.start_publish())
    partial = client.video(0, b"p" * 1000)[: 12 + 300]  # header + first 300-byte chunk
    abort = client.send(MessageType.ABORT, (6).to_bytes(4, "big"), csid=2)
    events = feed(conn, partial + abort + client.video(40, b"fresh"))
    assert events == [VideoReceived(40, b"fresh", 1)]


# -- control messages ------------------------------------------------------------


def test_ping_request_gets_ping_response() -> None:
    client = Client()
    conn = new_connection()
    feed(conn, HANDSHAKE + client.connect())
    conn.data_to_send()
    feed(conn, client.ping(0xDEADBEEF))
    [pong] = ChunkReader().read_messages(conn.data_to_send())
    assert pong.type_id == MessageType.USER_CONTROL and pong.payload == b"\x00\x07\xde\xad\xbe\xef"


def test_acknowledgement_after_client_window() -> None:
    client = Client()
    conn = new_connection()
    feed(conn, HANDSHAKE + client.connect())
    conn.data_to_send()
    feed(conn, client.send(MessageType.WINDOW_ACK_SIZE, (1000).to_bytes(4, "big"), csid=2))
    reader = ChunkReader()
    reader.chunk_size = 4096
    # The handshake alone is past 1000 bytes, so the first ack goes out at once.
    [first] = reader.read_messages(conn.data_to_send())
    assert first.type_id == MessageType.ACKNOWLEDGEMENT and first.csid == 2
    acks = [int.from_bytes(first.payload, "big")]
    assert acks[0] == conn.bytes_received
    for _ in range(10):
        feed(conn, client.send(MessageType.AUDIO, b"z" * 300, stream_id=1, csid=4))
        acks += [
            int.from_bytes(m.payload, "big")
            for m in reader.read_messages(conn.data_to_send())
            if m.type_id == MessageType.ACKNOWLEDGEMENT
        ]
    assert len(acks) >= 3, acks
    assert all(b - a >= 1000 for a, b in itertools.pairwise(acks))
    assert acks[-1] <= conn.bytes_received
    assert conn.bytes_received - acks[-1] < 1000


def test_acknowledgement_with_announced_window_by_default() -> None:
    client = Client()
    conn = new_connection(window_ack_size=5000)
    feed(conn, HANDSHAKE)
    conn.data_to_send()
    feed(conn, client.connect())
    replies = ChunkReader().read_messages(conn.data_to_send())
    assert replies[0].payload == (5000).to_bytes(4, "big")
    data = b"".join(client.send(MessageType.AUDIO, b"y" * 100, stream_id=1, csid=4) for _ in range(20))
    feed(conn, data)
    reader = ChunkReader()
    reader.chunk_size = 4096
    [ack] = reader.read_messages(conn.data_to_send())
    assert ack.type_id == MessageType.ACKNOWLEDGEMENT
    assert int.from_bytes(ack.payload, "big") == conn.bytes_received


def test_unknown_commands_are_ignored_or_answered_with_error() -> None:
    client = Client()
    conn = new_connection()
    feed(conn, HANDSHAKE + client.connect())
    conn.data_to_send()
    events = feed(conn, client.command("whatever", 0.0, None) + client.command("_checkbw", 9.0, None))
    assert events == []
    reader = ChunkReader()
    reader.chunk_size = 4096
    [err] = commands(reader.read_messages(conn.data_to_send()))
    assert err[2][:2] == ["_error", 9.0]
    assert not conn.closed


# -- protocol errors and hostile input ----------------------------------------------


def assert_protocol_error(conn: RtmpServerConnection, events: list[Event]) -> None:
    assert events and isinstance(events[-1], ProtocolError)
    assert sum(isinstance(e, ProtocolError) for e in events) == 1
    assert conn.closed
    assert conn.receive_data(publish_conversation()) == []


def test_command_before_connect_is_a_protocol_error() -> None:
    client = Client()
    conn = new_connection()
    events = conn.receive_data(HANDSHAKE + client.command("createStream", 1.0, None))
    assert_protocol_error(conn, events)
    assert events[0] == HandshakeCompleted()


def test_bad_handshake_version_is_a_protocol_error() -> None:
    conn = new_connection()
    events = conn.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    assert_protocol_error(conn, events)
    assert conn.data_to_send() == b""


def test_truncated_handshake_waits_without_events() -> None:
    conn = new_connection()
    assert conn.receive_data(HANDSHAKE[:2000]) == []
    assert not conn.handshake_complete and not conn.closed


def test_message_over_length_limit_is_a_protocol_error() -> None:
    conn = new_connection(max_message_size=10_000)
    header = (
        b"\x06" + (0).to_bytes(3, "big") + (10_001).to_bytes(3, "big") + b"\x09" + (1).to_bytes(4, "little")
    )
    assert_protocol_error(conn, conn.receive_data(HANDSHAKE + Client().connect() + header))


def test_oversized_set_chunk_size_is_a_protocol_error() -> None:
    client = Client()
    conn = new_connection()
    data = HANDSHAKE + client.send(MessageType.SET_CHUNK_SIZE, (0x7FFFFFFF).to_bytes(4, "big"), csid=2)
    assert_protocol_error(conn, conn.receive_data(data))


def test_events_before_the_error_are_kept() -> None:
    client = Client()
    conn = new_connection()
    events = conn.receive_data(
        HANDSHAKE + client.connect() + b"\x49garbage!"
    )  # fmt 1 on a fresh chunk stream
    assert events[:2] == [HandshakeCompleted(), Connected("live", TC_URL)]
    assert_protocol_error(conn, events)


@pytest.mark.parametrize(
    "bad",
    [
        amf0.encode(1.0, 2.0),  # no command name
        amf0.encode("connect", 1.0) + b"\x02\x00",  # truncated AMF
        b"",  # empty command
    ],
)
def test_malformed_commands_are_protocol_errors(bad: bytes) -> None:
    client = Client()
    conn = new_connection()
    events = conn.receive_data(HANDSHAKE + client.send(MessageType.COMMAND_AMF0, bad))
    assert_protocol_error(conn, events)


def test_publish_on_unknown_stream_and_duplicate_connect() -> None:
    client = Client()
    conn = new_connection()
    data = HANDSHAKE + client.connect() + client.command("publish", 0.0, None, KEY, "live", stream_id=7)
    events = conn.receive_data(data)
    assert_protocol_error(conn, events)
    assert KEY not in events[-1].reason  # type: ignore[union-attr]
    conn = new_connection()
    assert_protocol_error(conn, conn.receive_data(HANDSHAKE + client.connect() + client.connect()))


def test_random_bytes_never_raise() -> None:
    rng = random.Random(20240517)
    for _ in range(200):
        conn = new_connection()
        data = rng.randbytes(rng.randrange(1, 2000))
        events = conn.receive_data(data)
        assert all(isinstance(e, (HandshakeCompleted, ProtocolError)) for e in events)


def test_random_bytes_after_a_good_handshake_never_raise() -> None:
    rng = random.Random(77)
    prefix = HANDSHAKE + Client().connect()
    for _ in range(300):
        conn = new_connection(max_message_size=64 * 1024)
        events = feed(conn, prefix)
        data = rng.randbytes(rng.randrange(1, 3000))
        for start in range(0, len(data), 97):
            events += feed(conn, data[start : start + 97])
        assert sum(isinstance(e, ProtocolError) for e in events) <= 1


def test_mutated_conversations_never_raise() -> None:
    rng = random.Random(5)
    base = publish_conversation()
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(HANDSHAKE), len(data))] = rng.randrange(256)
        conn = new_connection()
        events = feed(conn, bytes(data))
        errors = [e for e in events if isinstance(e, ProtocolError)]
        assert len(errors) <= 1 and (not errors or events[-1] is errors[0])
