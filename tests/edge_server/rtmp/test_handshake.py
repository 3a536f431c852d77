"""Server handshake state machine."""

from __future__ import annotations

import pytest

from edge_server.rtmp.handshake import (
    HANDSHAKE_SIZE,
    HandshakeError,
    HandshakeState,
    ServerHandshake,
)

C1 = bytes(range(256)) * 6
C2 = bytes(reversed(C1))


def _fixed_random(n: int) -> bytes:
    return b"\xab" * n


def test_full_handshake_in_one_piece_returns_trailing_bytes() -> None:
    hs = ServerHandshake(time_ms=0x01020304, random_bytes=_fixed_random)
    rest = hs.receive_data(b"\x03" + C1 + C2 + b"chunks")
    assert hs.done and hs.state is HandshakeState.DONE
    assert rest == b"chunks"
    out = hs.data_to_send()
    assert len(out) == 1 + 2 * HANDSHAKE_SIZE
    assert out[0] == 3  # S0
    s1 = out[1 : 1 + HANDSHAKE_SIZE]
    assert s1[:4] == b"\x01\x02\x03\x04"
    assert s1[4:8] == b"\x00\x00\x00\x00"  # simple handshake: version bytes zero
    assert s1[8:] == b"\xab" * (HANDSHAKE_SIZE - 8)
    assert out[1 + HANDSHAKE_SIZE :] == C1  # S2 echoes C1
    assert hs.data_to_send() == b""
    assert hs.receive_data(b"more") == b"more"


def test_s0_s1_are_sent_after_c0_and_s2_after_c1() -> None:
    hs = ServerHandshake(random_bytes=_fixed_random)
    assert hs.receive_data(b"\x03") == b""
    assert len(hs.data_to_send()) == 1 + HANDSHAKE_SIZE
    assert hs.state is HandshakeState.WAIT_C1
    assert hs.receive_data(C1[:-1]) == b""
    assert hs.data_to_send() == b""
    hs.receive_data(C1[-1:])
    assert hs.data_to_send() == C1
    assert hs.state is HandshakeState.WAIT_C2
    assert hs.receive_data(C2[:100]) == b""
    assert not hs.done
    assert hs.receive_data(C2[100:]) == b""
    assert hs.done


def test_byte_by_byte_equals_one_piece() -> None:
    data = b"\x03" + C1 + C2 + b"xyz"
    whole = ServerHandshake(random_bytes=_fixed_random)
    expected_rest = whole.receive_data(data)
    expected_out = whole.data_to_send()
    split = ServerHandshake(random_bytes=_fixed_random)
    rest = b""
    for i in range(len(data)):
        rest += split.receive_data(data[i : i + 1])
    assert rest == expected_rest == b"xyz"
    assert split.data_to_send() == expected_out


@pytest.mark.parametrize("version", [0, 6, 0x47, 0xFF])  # 6: RTMPE, 'G': an HTTP GET
def test_wrong_version_is_rejected(version: int) -> None:
    hs = ServerHandshake()
    with pytest.raises(HandshakeError):
        hs.receive_data(bytes([version]) + C1)
    assert issubclass(HandshakeError, ValueError)


def test_default_random_fills_s1() -> None:
    hs = ServerHandshake()
    hs.receive_data(b"\x03")
    out = hs.data_to_send()
    assert len(out) == 1 + HANDSHAKE_SIZE and out[5:9] == b"\x00\x00\x00\x00"
