"""AMF0 (Action Message Format 0) encoding and decoding for RTMP commands and metadata.

Mapping:
  number <-> float (ints and floats encode as number; numbers decode as float)
  boolean <-> bool, string/long string <-> str (long string chosen by size),
  object <-> dict, ECMA array -> EcmaArray (a dict subclass; encode one to get 0x08),
  strict array <-> list (tuples encode too), null <-> None, undefined <-> UNDEFINED,
  date <-> datetime (UTC), typed object -> dict, XML document -> str.

Everything in here treats input as hostile: truncated or malformed data raises
Amf0Error (a ValueError), never IndexError/struct.error/UnicodeDecodeError, and nesting
deeper than MAX_DEPTH is refused so a crafted payload cannot blow the stack.
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta
from typing import Any, Final

__all__ = [
    "Amf0Error",
    "EcmaArray",
    "MAX_DEPTH",
    "UNDEFINED",
    "decode",
    "decode_all",
    "encode",
]

MAX_DEPTH: Final = 64

NUMBER: Final = 0x00
BOOLEAN: Final = 0x01
STRING: Final = 0x02
OBJECT: Final = 0x03
NULL: Final = 0x05
UNDEFINED_MARKER: Final = 0x06
REFERENCE: Final = 0x07
ECMA_ARRAY: Final = 0x08
OBJECT_END: Final = 0x09
STRICT_ARRAY: Final = 0x0A
DATE: Final = 0x0B
LONG_STRING: Final = 0x0C
XML_DOCUMENT: Final = 0x0F
TYPED_OBJECT: Final = 0x10

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_DOUBLE = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_DATE_TZ = struct.Struct(">h")


class Amf0Error(ValueError):
    """AMF0 data is malformed, truncated, too deep, or of an unsupported type."""


class EcmaArray(dict[str, Any]):
    """A dict that encodes as an AMF0 ECMA array (what onMetaData usually carries)."""


class _Undefined:
    """Type of the UNDEFINED singleton (AMF0 undefined, distinct from null/None)."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Final = _Undefined()


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def encode(*values: Any) -> bytes:
    """Encode values one after another, as an RTMP command or data message body."""
    out = bytearray()
    for value in values:
        _encode_value(out, value, 0)
    return bytes(out)


def _encode_value(out: bytearray, value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise Amf0Error("AMF0 value nested too deeply to encode")
    if value is None:
        out.append(NULL)
    elif value is UNDEFINED:
        out.append(UNDEFINED_MARKER)
    elif isinstance(value, bool):
        out += bytes((BOOLEAN, 1 if value else 0))
    elif isinstance(value, (int, float)):
        out.append(NUMBER)
        out += _DOUBLE.pack(float(value))
    elif isinstance(value, str):
        _encode_string_value(out, value)
    elif isinstance(value, EcmaArray):
        out.append(ECMA_ARRAY)
        out += _U32.pack(len(value))
        _encode_properties(out, value, depth)
    elif isinstance(value, dict):
        out.append(OBJECT)
        _encode_properties(out, value, depth)
    elif isinstance(value, (list, tuple)):
        out.append(STRICT_ARRAY)
        out += _U32.pack(len(value))
        for item in value:
            _encode_value(out, item, depth + 1)
    elif isinstance(value, datetime):
        _encode_date(out, value)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMF0")


def _encode_string_value(out: bytearray, value: str) -> None:
    raw = value.encode("utf-8")
    if len(raw) <= 0xFFFF:
        out.append(STRING)
        out += _U16.pack(len(raw))
    else:
        if len(raw) > 0xFFFFFFFF:
            raise Amf0Error("string too long for AMF0")
        out.append(LONG_STRING)
        out += _U32.pack(len(raw))
    out += raw


def _encode_key(out: bytearray, key: str) -> None:
    if not isinstance(key, str):
        raise TypeError("AMF0 object keys must be str")
    raw = key.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise Amf0Error("AMF0 object key too long")
    out += _U16.pack(len(raw))
    out += raw


def _encode_properties(out: bytearray, mapping: dict[str, Any], depth: int) -> None:
    for key, item in mapping.items():
        _encode_key(out, key)
        _encode_value(out, item, depth + 1)
    out += b"\x00\x00\x09"


def _encode_date(out: bytearray, value: datetime) -> None:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    micros = (value - _EPOCH) // timedelta(microseconds=1)
    out.append(DATE)
    out += _DOUBLE.pack(micros / 1000.0)
    out += _DATE_TZ.pack(0)


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


def decode_all(data: bytes | bytearray | memoryview) -> list[Any]:
    """Decode every value in data (a command or data message body)."""
    reader = _Reader(bytes(data))
    values = []
    while reader.pos < len(reader.data):
        values.append(reader.value(0))
    return values


def decode(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[Any, int]:
    """Decode one value at offset; returns (value, offset just past it)."""
    reader = _Reader(bytes(data), offset)
    value = reader.value(0)
    return value, reader.pos


class _Reader:
    """Cursor over a bytes object; every read is bounds-checked."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        if pos < 0 or pos > len(data):
            raise Amf0Error("offset outside data")
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise Amf0Error("truncated AMF0 data")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise Amf0Error("truncated AMF0 data")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        return int(_U16.unpack(self.take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def double(self) -> float:
        return float(_DOUBLE.unpack(self.take(8))[0])

    def utf8(self, length: int) -> str:
        try:
            return self.take(length).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Amf0Error("invalid UTF-8 in AMF0 string") from exc

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise Amf0Error("AMF0 data nested too deeply")
        marker = self.u8()
        handler = _DECODERS.get(marker)
        if handler is None:
            raise Amf0Error(f"unsupported AMF0 type marker 0x{marker:02x}")
        return handler(self, depth)

    def properties(self, target: dict[str, Any], depth: int) -> dict[str, Any]:
        """Read key/value pairs up to the object-end marker (empty key + 0x09)."""
        while True:
            key = self.utf8(self.u16())
            if not key and self.pos < len(self.data) and self.data[self.pos] == OBJECT_END:
                self.pos += 1
                return target
            target[key] = self.value(depth + 1)


def _number(r: _Reader, depth: int) -> float:
    return r.double()


def _boolean(r: _Reader, depth: int) -> bool:
    return r.u8() != 0


def _string(r: _Reader, depth: int) -> str:
    return r.utf8(r.u16())


def _long_string(r: _Reader, depth: int) -> str:
    return r.utf8(r.u32())


def _object(r: _Reader, depth: int) -> dict[str, Any]:
    return r.properties({}, depth)


def _typed_object(r: _Reader, depth: int) -> dict[str, Any]:
    r.utf8(r.u16())  # class name: no use for it here
    return r.properties({}, depth)


def _ecma_array(r: _Reader, depth: int) -> EcmaArray:
    r.u32()  # advisory count; encoders get it wrong, the end marker is what counts
    result = EcmaArray()
    r.properties(result, depth)
    return result


def _strict_array(r: _Reader, depth: int) -> list[Any]:
    count = r.u32()
    # Each element takes at least one byte: refuse counts the data cannot hold
    # before looping, so a hostile count costs nothing.
    if count > len(r.data) - r.pos:
        raise Amf0Error("truncated AMF0 strict array")
    return [r.value(depth + 1) for _ in range(count)]


def _null(r: _Reader, depth: int) -> None:
    return None


def _undefined(r: _Reader, depth: int) -> _Undefined:
    return UNDEFINED


def _date(r: _Reader, depth: int) -> datetime:
    millis = r.double()
    r.take(2)  # time zone: reserved, should be 0, ignored by everyone
    if not math.isfinite(millis):
        raise Amf0Error("AMF0 date is not finite")
    try:
        return _EPOCH + timedelta(milliseconds=millis)
    except OverflowError as exc:
        raise Amf0Error("AMF0 date out of range") from exc


def _object_end(r: _Reader, depth: int) -> Any:
    raise Amf0Error("unexpected AMF0 object end marker")


_DECODERS = {
    NUMBER: _number,
    BOOLEAN: _boolean,
    STRING: _string,
    OBJECT: _object,
    NULL: _null,
    UNDEFINED_MARKER: _undefined,
    ECMA_ARRAY: _ecma_array,
    OBJECT_END: _object_end,
    STRICT_ARRAY: _strict_array,
    DATE: _date,
    LONG_STRING: _long_string,
    XML_DOCUMENT: _long_string,
    TYPED_OBJECT: _typed_object,
}
