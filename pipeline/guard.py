"""Privacy guard: the rules that keep a real face off the air when the pipeline cannot mask it.

1. Until the first detection has run on a stream, the whole frame is covered.
2. A face that tracking loses stays covered at its last place (grown) for a hold time
   (``pipeline/tracking.py`` keeps the held boxes; the masker covers them).
3. An error or a blown deadline never yields the raw frame: the last masked frame is
   repeated (if recent) or the whole frame is covered (``DeadlineRunner`` + the masker).
4. Where segmentation shows a person but no face was found in their head region, that
   region is covered (``heads_without_faces``). A person mask is reused on a later frame
   only while the picture outside the tracked faces has not changed since the frame it
   was made from (``picture_changed``): a guest walking in or a camera switch re-runs the
   segmenter on that very frame.
Every covered event is counted by reason (``COVER_REASONS``).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

import cv2
import numpy as np

from pipeline.tracking import inside_share
from pipeline.types import PersonMask

COVER_REASONS = (
    "no_detection_yet",  # rule 1
    "lost",  # rule 2: a tracked face lost by the landmark model
    "no_landmarks",  # rule 2: the detector found a face the landmark model rejects
    "person_no_face",  # rule 4
    "small_face",  # too small to swap: covered instead
    "turned_face",  # head turned too far for a frontal persona: covered instead
    "persona_pending",  # a new face whose persona is still being painted
    "error",  # rule 3: a stage raised
    "deadline",  # rule 3: the frame was not masked in time
    "found_late",  # a face first found on a later frame, covered in the frames held back (pipeline/lookahead.py)
)

PERSON_THRESHOLD = 0.5
HEAD_BAND = 0.5  # the head box: the blob's top rows, this many times the blob's width tall
HEAD_TALL = 2.0  # a head cover reaches this many times the head's width down the blob (hair, a bun, to chin)
MIN_PERSON_AREA = 0.004  # share of the mask: smaller blobs are noise (or too far to matter)


def head_regions(mask: PersonMask) -> list[np.ndarray]:
    """Head boxes (frame px) of each person blob: the top of the blob, about as tall as half
    its width, as wide as its top rows. A found face in it accounts for the head."""
    return [head for head, _ in _heads(mask)]


def _heads(mask: PersonMask) -> list[tuple[np.ndarray, np.ndarray]]:
    """(head box, cover box) per blob; the cover reaches HEAD_TALL times the head's width down
    (within the blob): a close-up's blob is mostly head, and the head box alone stopped at
    the mouth. Matching faces uses the head box only, so that a taller cover does not take
    in a neighbour's face and count it as this head's. Computed once per mask (kept in
    ``mask.extra``): the masker reuses a mask over frames."""
    cached = mask.extra.get("heads")
    if cached is None:
        cached = mask.extra["heads"] = _head_regions(mask)
    return cached


def _head_regions(mask: PersonMask) -> list[tuple[np.ndarray, np.ndarray]]:
    prob = mask.prob
    mh, mw = prob.shape
    fh, fw = mask.frame_hw
    binary = (prob >= PERSON_THRESHOLD).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    sx, sy = fw / mw, fh / mh
    heads = []
    aspect = sx / sy  # mask rows per mask column of the same length in the frame
    for i in range(1, n):
        x, y, w, h, area = stats[i]
        if area < MIN_PERSON_AREA * mh * mw:
            continue
        # Heights are set in frame proportions: the segmenter squeezes every frame into
        # 256x144, so a square or portrait frame's mask pixels are not square.
        band = max(2, min(h, int(round(HEAD_BAND * w * aspect))))
        rows = labels[y : y + band, x : x + w] == i
        cols = np.flatnonzero(rows.any(axis=0))
        hx0, hx1 = x + cols[0], x + cols[-1] + 1
        tall = min(h, max(band, int(round(HEAD_TALL * (hx1 - hx0) * aspect))))
        head = np.array([hx0 * sx, y * sy, hx1 * sx, (y + band) * sy], np.float32)
        cover = head.copy()
        cover[3] = (y + tall) * sy
        heads.append((head, cover))
    return heads


def _face_in(head: np.ndarray, face: np.ndarray) -> bool:
    """A face box whose centre lies in the head box grown by a quarter, that mostly
    overlaps it, or whose top edge lies in it (grown the same) with its centre in the
    head's columns. The last is the close-up: hair fills the top of the blob and the face box
    (brows to chin) starts in the head box and reaches far under it, centre included."""
    w, h = head[2] - head[0], head[3] - head[1]
    cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
    in_columns = head[0] - w / 4 <= cx <= head[2] + w / 4
    if in_columns and head[1] - h / 4 <= cy <= head[3] + h / 4:
        return True
    if head[0] <= cx <= head[2] and head[1] - h / 4 <= face[1] <= head[3] + h / 4:
        return True
    return inside_share(face, head) > 0.5


CHANGE_BLOCK = 8  # px of the segmenter-sized luma per block (40x40 px of a 1280x720 frame)
CHANGE_LEVEL = 16.0  # mean |luma difference| (0-255) of a block that counts as changed
FACE_MARGIN = 0.25  # blocks this far around a tracked face box move with the face: not a new person


def changed_blocks(
    reference: np.ndarray, luma: np.ndarray, faces: list[np.ndarray], frame_hw: tuple[int, int],
    level: float | None = None, face_margin: float = FACE_MARGIN,
) -> np.ndarray | None:
    """Which CHANGE_BLOCK px blocks of ``luma`` changed since ``reference`` (bool, blocks
    high x wide), with the blocks that move with a tracked face cleared; None when the two
    differ in size (everything changed).

    ``reference`` and ``luma``: the frame's luma at one small size; ``faces``: tracked face
    boxes in frame px, whose own movement (talking, nodding) is expected. A block whose mean
    difference reaches ``level`` counts: a head that cuts in or walks in changes far more
    than that, sensor noise and compression far less. Blocks wholly inside a face box grown
    by ``face_margin`` of its size are cleared.
    """
    level = CHANGE_LEVEL if level is None else level
    if reference.shape != luma.shape:
        return None
    sh, sw = luma.shape[:2]
    bh, bw = -(-sh // CHANGE_BLOCK), -(-sw // CHANGE_BLOCK)
    diff = cv2.absdiff(reference, luma)
    blocks = cv2.resize(diff.astype(np.float32), (bw, bh), interpolation=cv2.INTER_AREA)
    changed = blocks >= level
    if not changed.any():
        return changed
    for box in faces:
        x0, y0, x1, y1 = box_blocks(box, face_margin, frame_hw, (bh, bw))
        changed[y0:y1, x0:x1] = False
    return changed


def box_blocks(
    box: np.ndarray, margin: float, frame_hw: tuple[int, int], blocks_hw: tuple[int, int], *, partly: bool = False
) -> tuple[int, int, int, int]:
    """The blocks (x0, y0, x1, y1, end exclusive; empty when x1 <= x0 or y1 <= y0) of
    ``box`` (frame px) grown by ``margin`` of its size: those wholly inside it (a partly
    covered block still counts as outside a face), or with ``partly`` every block it touches."""
    (fh, fw), (bh, bw) = frame_hw, blocks_hw
    sx, sy = bw / fw, bh / fh
    mx, my = margin * (box[2] - box[0]), margin * (box[3] - box[1])
    lo, hi = (np.floor, np.ceil) if partly else (np.ceil, np.floor)
    x0, y0 = int(lo((box[0] - mx) * sx)), int(lo((box[1] - my) * sy))
    x1, y1 = int(hi((box[2] + mx) * sx)), int(hi((box[3] + my) * sy))
    return max(0, x0), max(0, y0), max(0, min(bw, x1)), max(0, min(bh, y1))


def picture_changed(
    reference: np.ndarray, luma: np.ndarray, faces: list[np.ndarray], frame_hw: tuple[int, int], level: float | None = None
) -> bool:
    """Has the picture changed, outside the tracked faces, since ``reference`` was taken?
    (``changed_blocks``; differently sized inputs are a change.)"""
    changed = changed_blocks(reference, luma, faces, frame_hw, level)
    return True if changed is None else bool(changed.any())


def heads_without_faces(mask: PersonMask, faces: list[np.ndarray]) -> list[np.ndarray]:
    """Cover boxes of the heads in which none of ``faces`` (found, tracked or held) lies."""
    return [cover for head, cover in _heads(mask) if not any(_face_in(head, f) for f in faces)]


T = TypeVar("T")


class DeadlineExceeded(Exception):
    """The pipeline did not return in time (or is still busy with an earlier frame)."""


@dataclass
class _Job(Generic[T]):
    arg: Any
    done: threading.Event
    result: T | None = None
    error: BaseException | None = None


class DeadlineRunner(Generic[T]):
    """Runs ``fn`` on its own thread and waits at most ``deadline_s`` for it.

    A stage that hangs cannot hold the stream: the caller gets :class:`DeadlineExceeded`
    at the deadline, and again for every frame offered while the late call is still
    running (its result is dropped). Exceptions from ``fn`` are re-raised to the caller.
    """

    def __init__(self, fn: Callable[[Any], T], deadline_s: float, name: str = "pipeline") -> None:
        self.fn = fn
        self.deadline_s = deadline_s
        self._jobs: queue.SimpleQueue[_Job[T] | None] = queue.SimpleQueue()
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job.result = self.fn(job.arg)
            except BaseException as exc:  # handed to the caller
                job.error = exc
            finally:
                self._busy.clear()
                job.done.set()

    @property
    def busy(self) -> bool:
        """A call is running (perhaps late, past its deadline)."""
        return self._busy.is_set()

    def run(self, arg: Any) -> T:
        if self._busy.is_set():
            raise DeadlineExceeded("the pipeline is still busy with an earlier frame")
        job: _Job[T] = _Job(arg, threading.Event())
        self._busy.set()
        self._jobs.put(job)
        if not job.done.wait(self.deadline_s):
            raise DeadlineExceeded(f"no result within {self.deadline_s * 1000:.0f} ms")
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=2.0)
