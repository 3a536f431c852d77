"""The interface between the media plane and the masking pipeline.

The media runtime hands each decoded frame to a FrameProcessor on a worker thread and
encodes whatever comes back. The masking stages implement this same interface.
"""

from __future__ import annotations

from typing import Protocol

import av


class FrameProcessor(Protocol):
    name: str

    def process(self, frame: av.VideoFrame) -> av.VideoFrame:
        """Return the frame to publish. Must keep frame.pts; may raise (the caller covers the frame)."""
        ...

    def close(self) -> None: ...


class IdentityProcessor:
    """Passes frames through untouched (`pipeline.processor: identity`: relay only, faces NOT masked)."""

    name = "identity"

    def process(self, frame: av.VideoFrame) -> av.VideoFrame:
        return frame

    def close(self) -> None:
        pass

