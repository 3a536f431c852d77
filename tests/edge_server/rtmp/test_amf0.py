"""AMF0 round trips, wire format, and hostile input."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from edge_server.rtmp import amf0
from edge_server.rtmp.amf0 import UNDEFINED, Amf0Error, EcmaArray, decode, decode_all, encode


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        1.0,
        -2.5,
        1e300,
        True,
        False,
        "",
        "connect",
        "日本語",
        "x" * 0xFFFF,
        "y" * 0x10000,  # becomes a long string
        {},
        {"app": "live", "n": 3.0, "nested": {"deep": [1.0, "a", None]}},
        EcmaArray({"width": 1280.0, "height": 720.0, "stereo": True}),
        EcmaArray(),
        [],
        [1.0, "two", False, None, {"k": "v"}],
        None,
        UNDEFINED,
        datetime(2024, 5, 17, 12, 30, 1, 250000, tzinfo=UTC),
    ],
    ids=lambda v: type(v).__name__,
)
def test_round_trip_every_type(value: object) -> None:
    assert decode_all(encode(value)) == [value]
    decoded, end = decode(encode(value))
    assert decoded == value and end == len(encode(value))


def test_type_mapping_details() -> None:
    [ecma, obj, number, long_string] = decode_all(encode(EcmaArray(a=1.0), {"a": 1.0}, 7, "z" * 70000))
    assert type(ecma) is EcmaArray and isinstance(ecma, dict)
    assert type(obj) is dict
    assert number == 7.0 and isinstance(number, float)
    assert len(long_string) == 70000
    assert decode_all(encode((1, 2))) == [[1.0, 2.0]]
    assert not UNDEFINED and repr(UNDEFINED) == "UNDEFINED"


def test_wire_format_matches_spec() -> None:
    assert encode(1.0) == b"\x00\x3f\xf0\x00\x00\x00\x00\x00\x00"
    assert encode(True, False) == b"\x01\x01\x01\x00"
    assert encode("ab") == b"\x02\x00\x02ab"
    assert encode({"a": None}) == b"\x03\x00\x01a\x05\x00\x00\x09"
    assert encode(EcmaArray(a=UNDEFINED)) == b"\x08\x00\x00\x00\x01\x00\x01a\x06\x00\x00\x09"
    assert encode([None]) == b"\x0a\x00\x00\x00\x01\x05"
    assert encode("q" * 0x10000)[:5] == b"\x0c\x00\x01\x00\x00"
    assert encode(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)) == (
        b"\x0b" + b"\x40\x8f\x40\x00\x00\x00\x00\x00" + b"\x00\x00"
    )


def test_multiple_values_like_a_command() -> None:
    body = encode("_result", 1, {"fmsVer": "FMS/3"}, {"code": "NetConnection.Connect.Success"})
    assert decode_all(body) == [
        "_result",
        1.0,
        {"fmsVer": "FMS/3"},
        {"code": "NetConnection.Connect.Success"},
    ]


def test_decoder_tolerates_wrong_ecma_count_and_typed_objects() -> None:
    wrong_count = b"\x08\x00\x00\x00\x63\x00\x01a\x00" + b"\x00" * 8 + b"\x00\x00\x09"
    assert decode_all(wrong_count) == [{"a": 0.0}]
    typed = b"\x10\x00\x03Foo\x00\x01k\x05\x00\x00\x09"
    assert decode_all(typed) == [{"k": None}]
    xml = b"\x0f\x00\x00\x00\x03<a>"
    assert decode_all(xml) == ["<a>"]


def test_empty_key_followed_by_value_is_a_property() -> None:
    data = b"\x03\x00\x00\x05\x00\x00\x09"  # key "" -> null, then end
    assert decode_all(data) == [{"": None}]


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00",  # number cut short
        b"\x01",  # boolean without value
        b"\x02\x00\x05ab",  # string shorter than its length
        b"\x0c\x00\x00\x00\x09abc",  # long string cut short
        b"\x03\x00\x01a\x05",  # object without end marker
        b"\x03\x00\x01a",  # object key without value
        b"\x08\x00\x00\x00\x01",  # ECMA array without properties
        b"\x0a\x00\x00\x00\x02\x05",  # strict array short one element
        b"\x0a\xff\xff\xff\xff",  # hostile count
        b"\x0b\x00\x00\x00",  # date cut short
        b"\x0b\x7f\xf8\x00\x00\x00\x00\x00\x00\x00\x00",  # NaN date
        b"\x0b\x7f\xef\xff\xff\xff\xff\xff\xff\x00\x00",  # date out of range
        b"\x02\x00\x02\xff\xfe",  # invalid UTF-8
        b"\x09",  # stray object end
        b"\x07\x00\x01",  # reference: unsupported
        b"\x11\x01",  # AMF3 switch: unsupported
        b"\x0d",  # unsupported marker
        b"\x42",  # unknown marker
    ],
)
def test_malformed_input_raises_amf0_error(data: bytes) -> None:
    with pytest.raises(Amf0Error):
        decode_all(data)
    assert issubclass(Amf0Error, ValueError)


def test_every_truncation_of_a_rich_value_raises_amf0_error() -> None:
    body = encode(
        "onMetaData",
        EcmaArray(
            width=640.0, encoder="Lavf", tags=[1.0, {"a": True}], when=datetime(2020, 1, 1, tzinfo=UTC)
        ),
    )
    for cut in range(1, len(body)):
        try:
            values = decode_all(body[:cut])
        except Amf0Error:
            continue
        # A cut that falls exactly between the two values is a valid shorter message.
        assert values == ["onMetaData"]


def test_nesting_depth_limit() -> None:
    deep: object = None
    for _ in range(amf0.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(Amf0Error):
        encode(deep)
    hostile = b"\x0a\x00\x00\x00\x01" * 100_000 + b"\x05"
    with pytest.raises(Amf0Error):
        decode_all(hostile)
    ok: object = None
    for _ in range(amf0.MAX_DEPTH - 1):
        ok = {"k": ok}
    assert decode_all(encode(ok)) == [ok]


def test_random_garbage_never_escapes_as_another_exception() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        try:
            decode_all(data)
        except Amf0Error:
            pass


def test_mutated_valid_messages_never_escape_as_another_exception() -> None:
    rng = random.Random(99)
    base = bytearray(encode("connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live", "list": [1.0, "x"]}))
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            decode_all(bytes(data))
        except Amf0Error:
            pass


def test_unencodable_type() -> None:
    with pytest.raises(TypeError):
        encode(object())
    with pytest.raises(TypeError):
        encode({1: "x"})
