"""Where the face detector has to look: where the picture changed since it last looked.

A face cannot appear in a part of the picture that has not changed since the detector last
scanned it there: walking in, cutting in, turning towards the camera or a camera switch all
change the luma of the blocks the face lands on (``guard.changed_blocks``). So between
whole-frame passes (the first one, then at least every ``full_every`` frames, as a
backstop) a detector run scans only

- the blocks that changed since the detector last scanned them, outside the tracked faces'
  own boxes (a tracked face is followed by its landmarks; the detector only ever looks for
  new faces), each area grown by SCAN_GROW_BLOCKS so a face's unchanged edge is in view;
- every held (lost) face's box, grown, so a face that comes back is found again, and
  every head the person rule covered (a person the segmenter sees, no face found there):
  a face the detector missed there is looked for on every run, changed or not.

A talking head in a still room costs the detector nothing between full passes (the frame's
p95 is the detector's frame, ``docs/benchmarks.md``); a crowd or a moving camera is
scanned whole, as before. Each block remembers the luma it had when it was last scanned,
so slow changes add up until they count. The price: a face the detector missed in a still
part of the picture, where the segmenter sees no person either, is looked for again at the
next whole-frame pass, not the next run. Pure logic: luma arrays in, boxes out.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.guard import CHANGE_BLOCK, box_blocks, changed_blocks

SCAN_GROW_BLOCKS = 1  # a changed area is scanned with this many blocks around it
TRACKED_MARGIN = 0.0  # a tracked face's own box is left out of the scan (not grown: a newcomer beside it is scanned)
REVISIT_GROW = 0.3  # a held face's or faceless head's box is scanned this much bigger (as a held face is covered)
FULL_SHARE = 0.5  # when the areas add up to more of the frame than this, scan it whole: one pass is cheaper


@dataclass(frozen=True)
class ScanPlan:
    """What one detector run looks at: the whole frame, some boxes, or nothing."""

    full: bool
    regions: tuple[tuple[int, int, int, int], ...] = ()  # frame px (x0, y0, x1, y1), when not full
    luma_rects: tuple[tuple[int, int, int, int], ...] = ()  # the same areas in luma px (block aligned)

    @property
    def empty(self) -> bool:
        return not self.full and not self.regions


FULL_PLAN = ScanPlan(full=True)


def _area(r: list[int]) -> int:
    return max(0, r[2] - r[0]) * max(0, r[3] - r[1])


def merge_rects(rects: list[list[int]], slack: int = 0) -> list[list[int]]:
    """Replace two rects by their bounding box wherever that box is no bigger than the two
    together: fewer, never larger, scans. With ``slack`` (what one more scan costs beyond its
    area, in the rects' squared units) also wherever the box is no bigger than the two plus
    ``slack``: one run where two would cost more."""
    rects = [r[:] for r in rects if _area(r) > 0]
    merged = True
    while merged:
        merged = False
        out: list[list[int]] = []
        for r in rects:
            for o in out:
                # (two rects apart never fit a box of their own area: slack 0 merges only overlaps)
                box = [min(o[0], r[0]), min(o[1], r[1]), max(o[2], r[2]), max(o[3], r[3])]
                if _area(box) <= _area(o) + _area(r) + slack:
                    o[:] = box
                    merged = True
                    break
            else:
                out.append(r)
        rects = out
    return rects


def _minus(rect: list[int], hole: tuple[int, int, int, int]) -> list[list[int]]:
    """``rect`` less ``hole``: up to four rects (above, below, left, right of it)."""
    x0, y0, x1, y1 = rect
    hx0, hy0, hx1, hy1 = max(x0, hole[0]), max(y0, hole[1]), min(x1, hole[2]), min(y1, hole[3])
    if hx1 <= hx0 or hy1 <= hy0:
        return [rect]
    parts = [[x0, y0, x1, hy0], [x0, hy1, x1, y1], [x0, hy0, hx0, hy1], [hx1, hy0, x1, hy1]]
    return [r for r in parts if _area(r) > 0]


class ChangeScanner:
    """Plans each detector run (``plan``) and remembers what it saw (``scanned``)."""

    def __init__(self, full_every: int) -> None:
        self.full_every = int(full_every)
        self._reference: np.ndarray | None = None  # per block: the luma when the detector last scanned it
        self._last_full = 0  # frame number of the last whole-frame pass (set with the reference)

    def plan(
        self, luma: np.ndarray, tracked: list[np.ndarray], revisit: list[np.ndarray], frame_hw: tuple[int, int], frame: int
    ) -> ScanPlan:
        """The scan for frame number ``frame``: ``luma`` is its luma at the scanner's small
        size, ``tracked`` the tracked faces' boxes and ``revisit`` boxes always scanned (held
        faces, faceless heads), in frame px."""
        if self.full_every <= 1 or self._reference is None or frame - self._last_full >= self.full_every:
            return FULL_PLAN
        changed = changed_blocks(self._reference, luma, tracked, frame_hw, face_margin=TRACKED_MARGIN)
        if changed is None:
            return FULL_PLAN  # the picture's size changed
        fh, fw = frame_hw
        bh, bw = changed.shape
        for box in revisit:
            x0, y0, x1, y1 = box_blocks(box, REVISIT_GROW, frame_hw, (bh, bw), partly=True)
            changed[y0:y1, x0:x1] = True
        if not changed.any():
            return ScanPlan(full=False)
        n, _, stats, _ = cv2.connectedComponentsWithStats(changed.astype(np.uint8), connectivity=8)
        g = SCAN_GROW_BLOCKS
        rects = [
            [max(0, x - g), max(0, y - g), min(bw, x + w + g), min(bh, y + h + g)]
            for x, y, w, h, _ in stats[1:n]
        ]
        # A tracked face's head moving changes a ring of blocks around its box; the box
        # itself (its blocks are cleared above) is not scanned for that.
        for box in tracked:
            hole = box_blocks(box, TRACKED_MARGIN, frame_hw, (bh, bw))
            rects = [part for r in rects for part in _minus(r, hole)]
        rects = merge_rects(rects)
        if sum(_area(r) for r in rects) > FULL_SHARE * bw * bh:
            return FULL_PLAN
        lh, lw = luma.shape[:2]
        luma_rects = tuple(
            (r[0] * CHANGE_BLOCK, r[1] * CHANGE_BLOCK, min(lw, r[2] * CHANGE_BLOCK), min(lh, r[3] * CHANGE_BLOCK))
            for r in rects
        )
        fx, fy = fw / lw, fh / lh
        regions = tuple(
            (int(x0 * fx), int(y0 * fy), min(fw, int(np.ceil(x1 * fx))), min(fh, int(np.ceil(y1 * fy))))
            for x0, y0, x1, y1 in luma_rects
        )
        return ScanPlan(full=False, regions=regions, luma_rects=luma_rects)

    def scanned(self, plan: ScanPlan, luma: np.ndarray, frame: int) -> None:
        """The detector ran ``plan`` on the frame whose luma this is: those blocks are seen."""
        if plan.full:
            self._reference = luma.copy()
            self._last_full = frame
            return
        if self._reference is None or self._reference.shape != luma.shape:
            return  # nothing to update: the next plan scans the whole frame
        for x0, y0, x1, y1 in plan.luma_rects:
            self._reference[y0:y1, x0:x1] = luma[y0:y1, x0:x1]


__all__ = ["ChangeScanner", "ScanPlan", "FULL_PLAN", "SCAN_GROW_BLOCKS", "FULL_SHARE", "merge_rects"]
