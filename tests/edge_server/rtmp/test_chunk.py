"""Chunk stream reader and writer."""

from __future__ import annotations

import random

import pytest

from edge_server.rtmp.chunk import ChunkError, ChunkReader, ChunkWriter
from edge_server.rtmp.messages import MessageType, RtmpMessage


def basic(fmt: int, csid: int, *, force3: bool = False) -> bytes:
    if csid < 64 and not force3:
        return bytes([(fmt << 6) | csid])
    if csid < 320 and not force3:
        return bytes([fmt << 6, csid - 64])
    rest = csid - 64
    return bytes([(fmt << 6) | 1, rest & 0xFF, rest >> 8])


def fmt0(csid: int, ts: int, length: int, type_id: int, stream_id: int) -> bytes:
    ts_field = min(ts, 0xFFFFFF)
    out = basic(0, csid) + ts_field.to_bytes(3, "big") + length.to_bytes(3, "big")
    out += bytes([type_id]) + stream_id.to_bytes(4, "little")
    if ts_field == 0xFFFFFF:
        out += ts.to_bytes(4, "big")
    return out


def fmt1(csid: int, delta: int, length: int, type_id: int) -> bytes:
    field = min(delta, 0xFFFFFF)
    out = basic(1, csid) + field.to_bytes(3, "big") + length.to_bytes(3, "big") + bytes([type_id])
    if field == 0xFFFFFF:
        out += delta.to_bytes(4, "big")
    return out


def fmt2(csid: int, delta: int) -> bytes:
    field = min(delta, 0xFFFFFF)
    out = basic(2, csid) + field.to_bytes(3, "big")
    if field == 0xFFFFFF:
        out += delta.to_bytes(4, "big")
    return out


def set_chunk_size(size: int, csid: int = 2) -> bytes:
    return fmt0(csid, 0, 4, MessageType.SET_CHUNK_SIZE, 0) + size.to_bytes(4, "big")


def read_all(data: bytes, reader: ChunkReader | None = None) -> list[RtmpMessage]:
    return (reader or ChunkReader()).read_messages(data)


def read_split(data: bytes, pieces: list[int]) -> list[RtmpMessage]:
    reader = ChunkReader()
    out: list[RtmpMessage] = []
    start = 0
    for end in [*pieces, len(data)]:
        out += reader.read_messages(data[start:end])
        start = end
    return out


# -- header types -----------------------------------------------------------


def test_fmt0_single_chunk() -> None:
    [msg] = read_all(fmt0(3, 1000, 5, 20, 0) + b"hello")
    assert msg == RtmpMessage(20, 0, 1000, b"hello", 3)


def test_fmt0_multi_chunk_with_fmt3_continuations() -> None:
    payload = bytes(range(256)) + b"x" * 44  # 300 bytes -> 128 + 128 + 44
    data = (
        fmt0(4, 7, 300, 9, 1) + payload[:128] + basic(3, 4) + payload[128:256] + basic(3, 4) + payload[256:]
    )
    [msg] = read_all(data)
    assert (msg.type_id, msg.stream_id, msg.timestamp, msg.payload) == (9, 1, 7, payload)


def test_fmt1_fmt2_fmt3_deltas_accumulate() -> None:
    data = (
        fmt0(6, 100, 2, 8, 1)
        + b"a0"
        + fmt1(6, 20, 3, 8)
        + b"a11"  # new length, delta 20 -> 120
        + fmt2(6, 23)
        + b"a22"  # same length/type, delta 23 -> 143
        + basic(3, 6)
        + b"a33"  # everything repeats -> 166
        + basic(3, 6)
        + b"a44"  # -> 189
        + fmt1(6, 0, 1, 9)
        + b"v"  # new type, delta 0 -> 189
    )
    msgs = read_all(data)
    assert [(m.timestamp, m.type_id, m.payload) for m in msgs] == [
        (100, 8, b"a0"),
        (120, 8, b"a11"),
        (143, 8, b"a22"),
        (166, 8, b"a33"),
        (189, 8, b"a44"),
        (189, 9, b"v"),
    ]
    assert all(m.stream_id == 1 and m.csid == 6 for m in msgs)


def test_fmt3_new_message_after_fmt0_uses_its_timestamp_as_delta() -> None:
    # RTMP spec (5.3.1.2.4 example) and ffmpeg's reader/writer agree on this.
    data = fmt0(5, 33, 1, 9, 1) + b"a" + basic(3, 5) + b"b"
    assert [m.timestamp for m in read_all(data)] == [33, 66]


def test_timestamps_wrap_mod_2_32() -> None:
    data = fmt0(5, 0xFFFFFFF0, 1, 9, 1) + b"a" + fmt2(5, 0x20) + b"b"
    assert [m.timestamp for m in read_all(data)] == [0xFFFFFFF0, 0x10]


@pytest.mark.parametrize("csid", [2, 63, 64, 100, 319, 320, 1000, 65599])
def test_basic_header_sizes(csid: int) -> None:
    data = fmt0(csid, 1, 3, 8, 1) + b"abc"
    [msg] = read_all(data)
    assert msg.csid == csid and msg.payload == b"abc"
    assert ChunkWriter().write(msg) == data


def test_three_byte_basic_header_for_small_csid_is_accepted() -> None:
    data = basic(0, 70, force3=True) + fmt0(70, 1, 1, 8, 1)[2:] + b"z"
    [msg] = read_all(data)
    assert msg.csid == 70 and msg.payload == b"z"


def test_zero_length_message() -> None:
    [msg] = read_all(fmt0(3, 0, 0, 20, 0))
    assert msg.payload == b""


# -- extended timestamps ------------------------------------------------------


def test_extended_timestamp_fmt0_and_repeated_on_fmt3_continuations() -> None:
    ts = 0x01234567
    payload = b"p" * 300
    ext = ts.to_bytes(4, "big")
    data = fmt0(4, ts, 300, 9, 1) + payload[:128]
    data += basic(3, 4) + ext + payload[128:256]
    data += basic(3, 4) + ext + payload[256:]
    [msg] = read_all(data)
    assert msg.timestamp == ts and msg.payload == payload


def test_extended_timestamp_continuations_without_repeat_are_accepted() -> None:
    ts = 0x01234567
    payload = b"q" * 200
    data = fmt0(4, ts, 200, 9, 1) + payload[:128] + basic(3, 4) + payload[128:]
    [msg] = read_all(data)
    assert msg.timestamp == ts and msg.payload == payload


def test_extended_timestamp_exactly_ffffff() -> None:
    data = fmt0(4, 0xFFFFFF, 1, 9, 1) + b"x"
    assert data[1:4] == b"\xff\xff\xff" and len(data) == 1 + 11 + 4 + 1
    [msg] = read_all(data)
    assert msg.timestamp == 0xFFFFFF


def test_extended_delta_on_fmt1_and_new_fmt3_message() -> None:
    delta = 0x1000000
    data = fmt0(4, 5, 1, 9, 1) + b"a" + fmt1(4, delta, 1, 9) + b"b"
    data += basic(3, 4) + (delta + 1).to_bytes(4, "big") + b"c"  # fmt3 carries its own ext delta
    msgs = read_all(data)
    assert [m.timestamp for m in msgs] == [5, 5 + delta, 5 + delta + delta + 1]


# -- interleaving, chunk size, abort --------------------------------------------


def test_interleaved_chunk_streams() -> None:
    video = bytes(range(200))
    audio = b"A" * 150
    data = (
        fmt0(6, 0, 200, 9, 1)
        + video[:128]
        + fmt0(4, 0, 150, 8, 1)
        + audio[:128]
        + basic(3, 6)
        + video[128:]
        + fmt0(3, 0, 2, 20, 0)
        + b"\x05\x05"
        + basic(3, 4)
        + audio[128:]
    )
    msgs = read_all(data)
    assert [(m.csid, m.type_id, m.payload) for m in msgs] == [
        (6, 9, video),
        (3, 20, b"\x05\x05"),
        (4, 8, audio),
    ]


def test_set_chunk_size_applies_to_following_chunks() -> None:
    payload = b"z" * 1000
    data = set_chunk_size(4096) + fmt0(6, 0, 1000, 9, 1) + payload
    reader = ChunkReader()
    msgs = reader.read_messages(data)
    assert msgs[0].type_id == MessageType.SET_CHUNK_SIZE
    assert msgs[1].payload == payload
    assert reader.chunk_size == 4096


def test_set_chunk_size_mid_buffer_with_byte_splits() -> None:
    payload = b"w" * 500
    data = set_chunk_size(300) + fmt0(6, 0, 500, 9, 1) + payload[:300] + basic(3, 6) + payload[300:]
    expected = read_all(data)
    assert expected[1].payload == payload
    assert read_split(data, list(range(1, len(data)))) == expected


@pytest.mark.parametrize("size", [0, 0x80000000, 0xFFFFFFFF])
def test_set_chunk_size_invalid(size: int) -> None:
    with pytest.raises(ChunkError):
        read_all(set_chunk_size(size))


def test_set_chunk_size_above_configured_maximum() -> None:
    with pytest.raises(ChunkError):
        read_all(set_chunk_size(16 * 1024 * 1024 + 1))
    read_all(set_chunk_size(16 * 1024 * 1024))
    with pytest.raises(ChunkError):
        read_all(set_chunk_size(70_000), ChunkReader(max_chunk_size=65_536))


def test_set_chunk_size_too_short() -> None:
    with pytest.raises(ChunkError):
        read_all(fmt0(2, 0, 2, MessageType.SET_CHUNK_SIZE, 0) + b"\x00\x01")


def test_abort_drops_partial_message() -> None:
    payload = b"n" * 200
    data = (
        fmt0(6, 0, 200, 9, 1)
        + payload[:128]
        + fmt0(2, 0, 4, MessageType.ABORT, 0)
        + (6).to_bytes(4, "big")
        + fmt0(6, 10, 3, 9, 1)
        + b"new"
    )
    msgs = read_all(data)
    assert [m.type_id for m in msgs] == [MessageType.ABORT, 9]
    assert msgs[1].payload == b"new"


def test_abort_then_fmt3_starts_a_new_message() -> None:
    data = (
        fmt0(6, 0, 200, 9, 1)
        + b"x" * 128
        + fmt0(2, 0, 4, MessageType.ABORT, 0)
        + (6).to_bytes(4, "big")
        + basic(3, 6)
        + b"y" * 128
        + basic(3, 6)
        + b"y" * 72
    )
    msgs = read_all(data)
    assert msgs[-1].payload == b"y" * 200


# -- limits and hostile input -----------------------------------------------------


def test_message_length_over_limit() -> None:
    with pytest.raises(ChunkError):
        read_all(fmt0(3, 0, 8 * 1024 * 1024 + 1, 9, 1))
    with pytest.raises(ChunkError):
        read_all(fmt0(3, 0, 1001, 9, 1), ChunkReader(max_message_size=1000))


def test_unfinished_messages_across_chunk_streams_are_bounded() -> None:
    reader = ChunkReader(max_message_size=1000, max_pending_bytes=1000)
    data = b"".join(fmt0(csid, 0, 1000, 9, 1) + b"x" * 128 for csid in range(3, 10))
    assert reader.read_messages(data) == []  # 7 * 128 = 896 bytes pending: fine
    with pytest.raises(ChunkError):
        reader.read_messages(fmt0(10, 0, 1000, 9, 1) + b"x" * 128)


def test_pending_bytes_are_released_by_completion_abort_and_new_headers() -> None:
    reader = ChunkReader(max_message_size=300, max_pending_bytes=300)
    for _ in range(20):
        msgs = reader.read_messages(
            fmt0(4, 0, 300, 9, 1) + b"a" * 128 + basic(3, 4) + b"a" * 128 + basic(3, 4) + b"a" * 44
        )
        assert len(msgs) == 1
        reader.read_messages(fmt0(5, 0, 300, 9, 1) + b"b" * 128)
        reader.read_messages(fmt0(2, 0, 4, MessageType.ABORT, 0) + (5).to_bytes(4, "big"))
        reader.read_messages(fmt0(6, 0, 300, 9, 1) + b"c" * 128)
        reader.read_messages(fmt0(6, 0, 1, 9, 1) + b"c")  # new header drops the half message


def test_number_of_chunk_streams_is_bounded() -> None:
    reader = ChunkReader(max_chunk_streams=10)
    reader.read_messages(b"".join(fmt0(csid, 0, 1, 8, 1) + b"a" for csid in range(2, 12)))
    with pytest.raises(ChunkError):
        reader.read_messages(fmt0(12, 0, 1, 8, 1) + b"a")


def test_non_fmt0_on_fresh_chunk_stream_is_an_error() -> None:
    for data in (fmt1(9, 0, 1, 8) + b"a", fmt2(9, 0) + b"a", basic(3, 9) + b"a"):
        with pytest.raises(ChunkError):
            read_all(data)


def test_random_garbage_raises_only_chunk_error() -> None:
    rng = random.Random(4321)
    for _ in range(500):
        reader = ChunkReader(max_message_size=64 * 1024)
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        try:
            reader.read_messages(data)
        except ChunkError:
            pass


# -- writer -----------------------------------------------------------------------


def test_writer_fmt0_then_fmt3_continuations() -> None:
    writer = ChunkWriter()
    payload = bytes(300)
    data = writer.write(RtmpMessage(9, 1, 40, payload, 6))
    assert (
        data == fmt0(6, 40, 300, 9, 1) + payload[:128] + b"\xc6" + payload[128:256] + b"\xc6" + payload[256:]
    )


def test_writer_extended_timestamp_repeats_on_continuations() -> None:
    writer = ChunkWriter(100)
    ts = 0xFFFFFF + 5
    payload = b"e" * 250
    data = writer.write(RtmpMessage(9, 1, ts, payload, 6))
    ext = ts.to_bytes(4, "big")
    assert (
        data
        == fmt0(6, ts, 250, 9, 1)
        + payload[:100]
        + b"\xc6"
        + ext
        + payload[100:200]
        + b"\xc6"
        + ext
        + payload[200:]
    )
    reader = ChunkReader()
    reader.chunk_size = 100
    assert reader.read_messages(data) == [RtmpMessage(9, 1, ts, payload, 6)]


@pytest.mark.parametrize("chunk_size", [1, 7, 128, 4096])
def test_writer_reader_round_trip(chunk_size: int) -> None:
    rng = random.Random(chunk_size)
    messages = [
        RtmpMessage(
            rng.choice([8, 9, 18, 20]),
            rng.randrange(3),
            rng.randrange(2**32),
            rng.randbytes(rng.randrange(0, 3000)),
            rng.choice([3, 4, 70, 400]),
        )
        for _ in range(30)
    ]
    writer = ChunkWriter(chunk_size)
    reader = ChunkReader()
    reader.chunk_size = chunk_size
    data = b"".join(writer.write(m) for m in messages)
    assert reader.read_messages(data) == messages


def test_writer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ChunkWriter(0)
    with pytest.raises(ValueError):
        ChunkWriter().write(RtmpMessage(9, 1, 0, b"", 1))
    with pytest.raises(ValueError):
        ChunkWriter().write(RtmpMessage(9, 1, 0, bytes(0x1000000), 3))
