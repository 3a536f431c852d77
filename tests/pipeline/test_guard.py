from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipeline.guard import CHANGE_LEVEL, HEAD_TALL, DeadlineExceeded, DeadlineRunner, head_regions, heads_without_faces, picture_changed
from pipeline.types import PersonMask


def _person_mask() -> PersonMask:
    """A head (circle) on shoulders, at the segmenter's 144x256, for a 720x1280 frame."""
    prob = np.zeros((144, 256), np.float32)
    yy, xx = np.mgrid[0:144, 0:256]
    prob[(xx - 128) ** 2 + (yy - 50) ** 2 < 22**2] = 0.95  # head: x 106-150, y 28-72
    prob[90:, 70:186] = 0.9  # shoulders
    prob[70:90, 118:138] = 0.9  # neck
    return PersonMask(prob, (720, 1280))


def test_head_region_sits_on_top_of_the_person():
    (head,) = head_regions(_person_mask())
    x0, y0, x1, y1 = head / 5  # back to mask pixels
    assert y0 == pytest.approx(28, abs=1)
    assert 100 <= x0 <= 110 and 146 <= x1 <= 156  # the head's width, not the shoulders'
    assert y1 > 60


def test_noise_blobs_are_ignored():
    prob = np.zeros((144, 256), np.float32)
    prob[10:13, 10:13] = 1.0
    assert head_regions(PersonMask(prob, (720, 1280))) == []


def test_person_without_face_is_reported_and_with_face_is_not():
    mask = _person_mask()
    assert len(heads_without_faces(mask, [])) == 1
    face = np.array([560, 170, 720, 350], np.float32)  # in the head, frame px
    assert heads_without_faces(mask, [face]) == []
    elsewhere = np.array([0, 0, 100, 100], np.float32)
    assert len(heads_without_faces(mask, [elsewhere])) == 1


def test_a_close_ups_cover_reaches_its_chin_but_only_the_head_box_claims_faces():
    """A close-up: the blob is mostly head (60 wide, 140 tall at the mask's scale)."""
    prob = np.zeros((144, 256), np.float32)
    prob[4:144, 100:160] = 0.9
    mask = PersonMask(prob, (720, 1280))
    (head,) = head_regions(mask)
    (cover,) = heads_without_faces(mask, [])
    assert cover[[0, 1, 2]].tolist() == head[[0, 1, 2]].tolist()
    assert head[3] - head[1] == pytest.approx(0.5 * (head[2] - head[0]), rel=0.05)
    assert cover[3] - cover[1] == pytest.approx(HEAD_TALL * (cover[2] - cover[0]), rel=0.05)  # hair to chin
    chin = np.array([520, 460, 780, 560], np.float32)  # a face low in the cover, under the head box
    assert len(heads_without_faces(mask, [chin])) == 1, "a face below the head box must not account for it"
    face = np.array([540, 60, 760, 300], np.float32)
    assert heads_without_faces(mask, [face]) == []


def test_a_close_up_face_starting_in_the_head_box_accounts_for_it():
    """lp_d3 at 1280x720 (a 512x512 clip letterboxed): hair fills the blob's top, so the
    face box (brows to chin) starts in the head box and its centre lies far under it. The
    head counted as faceless on every frame and the swapped face was pixelated."""
    prob = np.zeros((144, 256), np.float32)
    prob[4:144, 79:185] = 0.9  # 530 frame px wide, hair at the top, cut off at the frame's bottom
    mask = PersonMask(prob, (720, 1280))
    (head,) = head_regions(mask)
    face = np.array([446, 205, 852, 681], np.float32)  # the tracked face, frame px
    assert (face[1] + face[3]) / 2 > head[3] + (head[3] - head[1]) / 4, "the centre test alone misses it"
    assert heads_without_faces(mask, [face]) == []
    beside = face + np.array([500, 0, 500, 0], np.float32)  # the same face outside the head's columns
    assert len(heads_without_faces(mask, [beside])) == 1


@pytest.mark.parametrize("frame_hw", [(720, 1280), (512, 512), (1280, 720)])
def test_head_boxes_keep_frame_proportions_whatever_the_frame_shape(frame_hw):
    """The segmenter squeezes every frame into 256x144: a square or portrait frame's mask
    pixels are not square, and the head box and its cover are sized in the frame's units."""
    prob = np.zeros((144, 256), np.float32)
    prob[4:144, 100:160] = 0.9
    mask = PersonMask(prob, frame_hw)
    (head,) = head_regions(mask)
    (cover,) = heads_without_faces(mask, [])
    width = head[2] - head[0]
    assert head[3] - head[1] == pytest.approx(0.5 * width, rel=0.1)
    assert cover[3] - cover[1] == pytest.approx(min(HEAD_TALL * width, frame_hw[0] * 140 / 144), rel=0.1)


def test_deadline_runner_returns_results_and_errors():
    runner = DeadlineRunner(lambda x: x * 2, 0.5)
    try:
        assert runner.run(21) == 42
        bad = DeadlineRunner(lambda x: 1 / x, 0.5)
        with pytest.raises(ZeroDivisionError):
            bad.run(0)
        bad.close()
    finally:
        runner.close()


def test_deadline_runner_gives_up_on_slow_calls_and_stays_closed_while_busy():
    release = threading.Event()

    def slow(x: int) -> int:
        if x == 1:
            release.wait(5)
        return x

    runner = DeadlineRunner(slow, 0.05)
    try:
        t = time.perf_counter()
        with pytest.raises(DeadlineExceeded):
            runner.run(1)
        assert time.perf_counter() - t < 1.0
        with pytest.raises(DeadlineExceeded, match="busy"):
            runner.run(2)  # the late call still runs: no second frame enters
        release.set()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                assert runner.run(3) == 3
                break
            except DeadlineExceeded:
                time.sleep(0.01)
        else:
            pytest.fail("runner never recovered after the slow call finished")
    finally:
        release.set()
        runner.close()


def _luma(seed: int = 0) -> np.ndarray:
    """A 256x144 picture with texture, as the segmenter-sized luma of a 1280x720 frame."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(120, 30, (144, 256)), 0, 255).astype(np.uint8)


def test_noise_is_not_a_change_but_a_new_head_is():
    ref = _luma()
    noisy = np.clip(ref.astype(int) + np.random.default_rng(1).integers(-4, 5, ref.shape), 0, 255).astype(np.uint8)
    assert not picture_changed(ref, ref.copy(), [], (720, 1280))
    assert not picture_changed(ref, noisy, [], (720, 1280))
    head = ref.copy()
    head[40:56, 200:216] = 230  # a 80x80 px bright blob in the frame: two by two blocks
    assert picture_changed(ref, head, [], (720, 1280))


def test_movement_inside_a_tracked_face_is_not_a_change_but_beside_it_is():
    ref = _luma()
    moved = ref.copy()
    moved[48:72, 96:120] = 255 - moved[48:72, 96:120]  # frame px 480..600 x 240..360
    face = np.array([440.0, 200.0, 640.0, 400.0], np.float32)
    assert picture_changed(ref, moved, [], (720, 1280))
    assert not picture_changed(ref, moved, [face], (720, 1280))
    beside = moved.copy()
    beside[48:64, 160:176] = 255 - beside[48:64, 160:176]  # frame px 800..880: outside the grown face box
    assert picture_changed(ref, beside, [face], (720, 1280))


def test_a_change_just_under_the_level_is_not_one():
    ref = np.full((144, 256), 100, np.uint8)
    cur = ref.copy()
    cur[0:8, 0:8] += int(CHANGE_LEVEL) - 1
    assert not picture_changed(ref, cur, [], (720, 1280))
    cur[0:8, 0:8] += 1
    assert picture_changed(ref, cur, [], (720, 1280))
    assert picture_changed(ref, cur[:, :128], [], (720, 1280)), "a different size is a change"

