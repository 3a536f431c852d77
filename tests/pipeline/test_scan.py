"""The change scanner: where the detector looks between its whole-frame passes."""

from __future__ import annotations

import numpy as np

from pipeline.guard import CHANGE_BLOCK, CHANGE_LEVEL
from pipeline.scan import FULL_SHARE, ChangeScanner, merge_rects

HW = (720, 1280)  # frame px; the luma is 256x144, so one block is 40x40 frame px
LUMA_HW = (144, 256)


def _luma(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(60, 200, LUMA_HW, dtype=np.uint8)


def _scanned_once(full_every: int = 30) -> tuple[ChangeScanner, np.ndarray]:
    scanner = ChangeScanner(full_every)
    ref = _luma()
    plan = scanner.plan(ref, [], [], HW, 0)
    assert plan.full, "nothing seen yet: the first run scans the whole frame"
    scanner.scanned(plan, ref, 0)
    return scanner, ref


def _paint(luma: np.ndarray, x0: int, y0: int, x1: int, y1: int, delta: int = 60) -> np.ndarray:
    """``luma`` with the frame-px box changed (a newcomer)."""
    out = luma.copy()
    sx, sy = LUMA_HW[1] / HW[1], LUMA_HW[0] / HW[0]
    ys, xs = slice(int(y0 * sy), int(np.ceil(y1 * sy))), slice(int(x0 * sx), int(np.ceil(x1 * sx)))
    out[ys, xs] = np.clip(out[ys, xs].astype(int) + delta, 0, 255).astype(np.uint8)
    return out


def _covers(region: tuple[int, int, int, int], box: tuple[int, int, int, int]) -> bool:
    return region[0] <= box[0] and region[1] <= box[1] and region[2] >= box[2] and region[3] >= box[3]


def test_an_unchanged_picture_needs_no_scan_until_the_backstop():
    scanner, ref = _scanned_once(full_every=30)
    for frame in (5, 10, 25):
        plan = scanner.plan(ref.copy(), [], [], HW, frame)
        assert plan.empty, f"frame {frame}: nothing changed, nothing to scan"
        scanner.scanned(plan, ref, frame)
    assert scanner.plan(ref.copy(), [], [], HW, 30).full, "the whole frame again after full_every frames"


def test_a_newcomer_is_scanned_with_a_margin_and_nothing_else():
    scanner, ref = _scanned_once()
    face = (900, 200, 1000, 320)
    plan = scanner.plan(_paint(ref, *face), [], [], HW, 5)
    assert not plan.full and len(plan.regions) == 1
    region = plan.regions[0]
    assert _covers(region, face)
    grow = 40  # one block (SCAN_GROW_BLOCKS) of 40 frame px on every side, for the face's unchanged edge
    assert _covers(region, (face[0] - grow, face[1] - grow, face[2] + grow, face[3] + grow))
    area = (region[2] - region[0]) * (region[3] - region[1])
    assert area < 0.05 * HW[0] * HW[1]


def test_a_tracked_face_moving_in_its_own_box_is_not_rescanned():
    scanner, ref = _scanned_once()
    face = np.array([400, 200, 640, 480], np.float32)
    moved = _paint(ref, 420, 220, 620, 460)  # talking, blinking: inside the tracked box
    assert scanner.plan(moved, [face], [], HW, 5).empty
    assert not scanner.plan(moved, [], [], HW, 5).empty, "the same change with no tracked face there is scanned"


def test_a_held_face_is_always_scanned():
    scanner, ref = _scanned_once()
    held = np.array([100, 100, 220, 260], np.float32)
    plan = scanner.plan(ref.copy(), [], [held], HW, 5)
    assert not plan.full and len(plan.regions) == 1
    assert _covers(plan.regions[0], (100, 100, 220, 260))


def test_a_slow_change_adds_up_against_what_the_detector_last_saw():
    """Each step is under the change level, but the block is compared with the luma it had
    when it was last scanned, not with the previous frame."""
    scanner, ref = _scanned_once()
    step = int(CHANGE_LEVEL * 0.6)
    box = (600, 400, 720, 520)
    once = _paint(ref, *box, delta=step)
    assert scanner.plan(once, [], [], HW, 5).empty
    twice = _paint(once, *box, delta=step)
    assert _covers(scanner.plan(twice, [], [], HW, 10).regions[0], box)


def test_a_scanned_area_is_remembered_and_not_scanned_again():
    scanner, ref = _scanned_once()
    new = _paint(ref, 900, 200, 1000, 320)
    plan = scanner.plan(new, [], [], HW, 5)
    scanner.scanned(plan, new, 5)
    assert scanner.plan(new.copy(), [], [], HW, 10).empty


def test_an_unscanned_plan_is_asked_again():
    """A detector run that raised is not recorded: the change is still there next time."""
    scanner, ref = _scanned_once()
    new = _paint(ref, 900, 200, 1000, 320)
    assert not scanner.plan(new, [], [], HW, 5).empty
    assert not scanner.plan(new, [], [], HW, 10).empty


def test_a_picture_that_changed_mostly_is_scanned_whole():
    scanner, ref = _scanned_once()
    assert scanner.plan(_paint(ref, 0, 0, 1280, 400), [], [], HW, 5).full
    assert scanner.plan(255 - ref, [], [], HW, 5).full, "a camera switch"
    small_change = _paint(ref, 0, 0, 200, 200)
    plan = scanner.plan(small_change, [], [], HW, 5)
    assert not plan.full and sum((r[2] - r[0]) * (r[3] - r[1]) for r in plan.regions) <= FULL_SHARE * HW[0] * HW[1]


def test_a_new_picture_size_is_scanned_whole():
    scanner, _ = _scanned_once()
    other = np.zeros((LUMA_HW[0] + CHANGE_BLOCK, LUMA_HW[1]), np.uint8)
    assert scanner.plan(other, [], [], HW, 5).full


def test_full_every_one_always_scans_whole():
    scanner, ref = _scanned_once(full_every=1)
    assert scanner.plan(ref.copy(), [], [], HW, 1).full


def test_separate_changes_give_separate_regions():
    scanner, ref = _scanned_once()
    a, b = (80, 80, 160, 160), (1000, 500, 1100, 600)
    plan = scanner.plan(_paint(_paint(ref, *a), *b), [], [], HW, 5)
    assert len(plan.regions) == 2
    assert any(_covers(r, a) for r in plan.regions) and any(_covers(r, b) for r in plan.regions)


def test_a_tracked_head_moving_is_scanned_around_its_box_not_across_it():
    """A talking head's hair and outline change in a ring around its box: the ring is
    scanned (a newcomer beside the head would be there), the tracked box inside it is not."""
    scanner, ref = _scanned_once()
    face = np.array([480, 200, 800, 560], np.float32)
    moved = ref
    for x0, y0, x1, y1 in ((440, 160, 840, 200), (440, 560, 840, 600), (440, 200, 480, 560), (800, 200, 840, 560)):
        moved = _paint(moved, x0, y0, x1, y1)
    moved = _paint(moved, 520, 240, 760, 520)  # and the face itself, talking
    plan = scanner.plan(moved, [face], [], HW, 5)
    assert not plan.full and plan.regions
    ring_box = (400, 120, 880, 640)  # the ring grown by a block
    assert all(_covers(ring_box, r) for r in plan.regions)
    inner = (520, 240, 760, 520)
    for r in plan.regions:
        ix = max(0, min(r[2], inner[2]) - max(r[0], inner[0]))
        iy = max(0, min(r[3], inner[3]) - max(r[1], inner[1]))
        assert ix * iy == 0, f"{r} scans inside the tracked box"
    covered = np.zeros(HW, bool)
    for x0, y0, x1, y1 in plan.regions:
        covered[y0:y1, x0:x1] = True
    assert covered[160:200, 440:840].all() and covered[200:560, 440:480].all(), "the ring must be scanned"


def test_merge_rects_joins_overlaps_and_with_slack_near_rects_but_never_far_ones():
    a, b = [0, 0, 64, 64], [32, 0, 96, 64]
    assert merge_rects([a, b]) == [[0, 0, 96, 64]], "overlapping: one box no bigger than the two"
    near, far = [0, 0, 64, 64], [96, 0, 160, 64]  # a 32 px gap: the box is 2 * 4096 + 2048 px
    assert merge_rects([near, far]) == [near, far], "apart: no box of their own area"
    assert merge_rects([near, far], slack=2048) == [[0, 0, 160, 64]]
    assert merge_rects([near, far], slack=2047) == [near, far]
    corners = [[0, 0, 32, 32], [600, 320, 640, 352]]  # opposite corners: the box is the frame
    assert merge_rects(corners, slack=12_000) == corners
