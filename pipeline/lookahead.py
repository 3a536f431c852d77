"""Hold each masked frame back a frame or two, and cover in it the faces found only later.

The detector can find a face one frame after it is first visible: a face stepping out from
behind another head, or one at the detector's limit (crowd_1080p frame 93, a woman of
60 px, was shown raw for exactly that one frame; ``docs/benchmarks.md``). The masker cannot
mend a frame it has already returned, so the runtime keeps the last ``depth`` masked frames
back: when a later frame starts masking a new face (``FaceMasker.new_face_boxes``), its
place is covered in the frames still held, and only then do they leave. It costs
``depth`` frame intervals of latency (33 ms at 30 fps for the default of one), which is
inside the "frame or two" the product allows, and nothing when no face is new.

Pure logic: frames and boxes in, frames out; the caller carries each frame's own tag
(its ingest time, its input) alongside.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

import av

from pipeline.cover import FACE_BLOCKS, blur, pixelate
from pipeline.frame_io import even_box, plane_views

T = TypeVar("T")
Box = Sequence[float]  # x0, y0, x1, y1 in frame px

MAX_DEPTH = 3


def coverable(frame: av.VideoFrame) -> bool:
    """``cover_box`` works on the planes of an even-sized yuv420p frame (what the masker makes)."""
    return frame.format.name == "yuv420p" and frame.height % 2 == 0 and frame.width % 2 == 0


def cover_box(frame: av.VideoFrame, box: Box, style: str) -> None:
    """Cover ``box`` of ``frame`` in place, in the style the privacy guard uses."""
    h, w = frame.height, frame.width
    if not coverable(frame):
        raise ValueError(f"a held frame must be even-sized yuv420p, not {frame.format.name} {w}x{h}")
    r = even_box(box, h, w)
    if r is None:
        return
    x0, y0, x1, y1 = r
    y, u, v = plane_views(frame)
    regions = (y[y0:y1, x0:x1], u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2])
    for plane in regions:
        # the same cells in every plane: chroma is half size, so half the pixels per cell
        plane[:] = pixelate(plane, FACE_BLOCKS) if style == "pixelate" else blur(plane)


@dataclass
class _Held(Generic[T]):
    frame: av.VideoFrame
    tag: T
    coverable: bool  # False for a frame with no raw pixels to mend (a fallback: covered or repeated)


@dataclass
class Lookahead(Generic[T]):
    """``push`` each masked frame as it comes; get back the frames that leave, in order.

    ``depth`` 0 passes every frame straight through. ``on_cover`` is called once per box
    covered in a held frame (the runtime counts it as covered reason ``found_late``).
    """

    depth: int = 1
    cover_style: str = "blur"  # the processor's own style replaces it (PipelineConfig.cover_style)
    on_cover: Callable[[], None] | None = None
    covered: int = 0  # boxes covered in held frames so far
    _held: deque[_Held[T]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if not 0 <= self.depth <= MAX_DEPTH:
            raise ValueError(f"lookahead depth must be 0..{MAX_DEPTH}, got {self.depth!r}")

    def push(self, frame: av.VideoFrame, new_faces: Sequence[Box] | None, tag: T) -> list[tuple[av.VideoFrame, T]]:
        """``frame`` as masked, the boxes of the faces it masks that the frame before it did
        not know (None: not known, e.g. the masker fell back on this frame; such a frame has
        nothing raw to mend either). Returns the frames that leave now."""
        if self.depth == 0:
            return [(frame, tag)]
        for box in new_faces or ():
            for held in self._held:
                if held.coverable:
                    cover_box(held.frame, box, self.cover_style)
                    self.covered += 1
                    if self.on_cover is not None:
                        self.on_cover()
        self._held.append(_Held(frame, tag, new_faces is not None and coverable(frame)))
        out = []
        while len(self._held) > self.depth:
            held = self._held.popleft()
            out.append((held.frame, held.tag))
        return out

    def push_processed(self, processor: object, frame: av.VideoFrame, tag: T) -> list[tuple[av.VideoFrame, T]]:
        """``push`` what ``processor`` (a ``FaceMasker``) just returned, with the new faces and
        cover style it reports. A processor that reports no faces (identity) holds nothing
        back: its frames pass straight through."""
        if not hasattr(processor, "new_face_boxes"):
            return self.flush() + [(frame, tag)]
        self.cover_style = getattr(processor, "cover_style", self.cover_style)
        return self.push(frame, processor.new_face_boxes, tag)

    def flush(self) -> list[tuple[av.VideoFrame, T]]:
        """The frames still held, in order (the stream ended: no later frame will come)."""
        out = [(held.frame, held.tag) for held in self._held]
        self._held.clear()
        return out

    def __len__(self) -> int:
        return len(self._held)


__all__ = ["Lookahead", "cover_box", "coverable", "MAX_DEPTH"]
