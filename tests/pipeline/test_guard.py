from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipeline.guard import DeadlineExceeded, DeadlineRunner, head_regions, heads_without_faces
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
