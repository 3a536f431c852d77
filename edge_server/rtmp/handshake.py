"""Server side of the RTMP handshake as a pure state machine (no sockets).

C0 (version) -> we queue S0+S1; C1 (1536 bytes) -> we queue S2 (C1 echoed);
C2 (1536 bytes) -> done. This is the "simple" handshake: S1's version bytes are zero,
which tells ffmpeg, OBS/librtmp and GStreamer not to expect the Flash-Player digest
scheme. Bytes that arrive after C2 belong to the chunk layer and are handed back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import Enum, auto
from typing import Final

__all__ = ["HANDSHAKE_SIZE", "RTMP_VERSION", "HandshakeError", "HandshakeState", "ServerHandshake"]

RTMP_VERSION: Final = 3
HANDSHAKE_SIZE: Final = 1536


class HandshakeError(ValueError):
    """The peer sent something that is not an RTMP handshake we can speak."""


class HandshakeState(Enum):
    WAIT_C0 = auto()
    WAIT_C1 = auto()
    WAIT_C2 = auto()
    DONE = auto()


class ServerHandshake:
    """Consumes C0/C1/C2, produces S0/S1/S2.

    `time_ms` goes into S1's time field; `random_bytes` fills S1 (injectable so tests
    are deterministic).
    """

    def __init__(
        self,
        *,
        time_ms: int = 0,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.state = HandshakeState.WAIT_C0
        self._time_ms = time_ms & 0xFFFFFFFF
        self._random_bytes = random_bytes
        self._buffer = bytearray()
        self._outbound = bytearray()

    @property
    def done(self) -> bool:
        return self.state is HandshakeState.DONE

    def receive_data(self, data: bytes) -> bytes:
        """Feed peer bytes; returns whatever followed C2 (empty until done).

        Raises HandshakeError on a C0 version other than 3. After DONE every byte is
        returned untouched.
        """
        if self.state is HandshakeState.DONE:
            return bytes(data)
        self._buffer += data
        if self.state is HandshakeState.WAIT_C0 and self._buffer:
            self._on_c0(self._buffer[0])
            del self._buffer[:1]
        if self.state is HandshakeState.WAIT_C1 and len(self._buffer) >= HANDSHAKE_SIZE:
            self._outbound += self._buffer[:HANDSHAKE_SIZE]  # S2 echoes C1
            del self._buffer[:HANDSHAKE_SIZE]
            self.state = HandshakeState.WAIT_C2
        if self.state is HandshakeState.WAIT_C2 and len(self._buffer) >= HANDSHAKE_SIZE:
            del self._buffer[:HANDSHAKE_SIZE]  # C2 content varies by client; not checked
            self.state = HandshakeState.DONE
            rest = bytes(self._buffer)
            self._buffer.clear()
            return rest
        return b""

    def data_to_send(self) -> bytes:
        """Drain queued S0/S1/S2 bytes."""
        out = bytes(self._outbound)
        self._outbound.clear()
        return out

    def _on_c0(self, version: int) -> None:
        if version != RTMP_VERSION:
            raise HandshakeError(f"unsupported RTMP version {version}")
        random_part = self._random_bytes(HANDSHAKE_SIZE - 8)
        if len(random_part) != HANDSHAKE_SIZE - 8:
            raise ValueError("random_bytes returned the wrong length")
        s1 = self._time_ms.to_bytes(4, "big") + b"\x00\x00\x00\x00" + random_part
        self._outbound.append(RTMP_VERSION)
        self._outbound += s1
        self.state = HandshakeState.WAIT_C1
