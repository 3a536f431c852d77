"""The lookahead: frames held back, covered where a later frame found a face anew."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from pipeline.lookahead import Lookahead, cover_box
from pipeline.stage import IdentityProcessor

BOX = (40.0, 30.0, 120.0, 110.0)


def _frame(pts: int, seed: int = 0) -> av.VideoFrame:
    """A detailed (noisy) yuv420p frame: a cover shows as lost detail."""
    rng = np.random.default_rng(seed + pts)
    f = av.VideoFrame.from_ndarray(rng.integers(0, 255, (240 * 3 // 2, 320), np.uint8), format="yuv420p")
    f.pts, f.time_base = pts, Fraction(1, 30)
    return f


def _detail(frame: av.VideoFrame, box=BOX) -> float:
    x0, y0, x1, y1 = (int(v) for v in box)
    return float(frame.to_ndarray()[: frame.height][y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].astype(np.float32).std())


def _planes(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray().copy()


def test_depth_zero_passes_every_frame_straight_through():
    la: Lookahead[int] = Lookahead(0)
    f = _frame(0)
    before = _planes(f)
    assert la.push(f, [BOX], 0) == [(f, 0)]
    assert la.flush() == [] and np.array_equal(_planes(f), before)


def test_a_face_found_on_the_next_frame_is_covered_in_the_frame_held_back():
    la: Lookahead[str] = Lookahead(1)
    first, second, third = _frame(0), _frame(1), _frame(2)
    raw_first = _planes(first)
    assert la.push(first, (), "a") == []  # held
    out = la.push(second, [BOX], "b")  # a face found on the second frame
    assert [(f.pts, tag) for f, tag in out] == [(0, "a")]
    assert _detail(first) < 0.2 * _detail(_frame(0)), "the face's place is covered in the held frame"
    changed = np.argwhere((_planes(first) != raw_first)[:240])
    assert changed[:, 0].min() >= 30 and changed[:, 0].max() < 112 and changed[:, 1].min() >= 40 and changed[:, 1].max() < 122
    assert la.covered == 1
    # the frame that found the face is not covered by it (the masker masked it there)
    raw_second = _planes(second)
    assert [f.pts for f, _ in la.push(third, (), "c")] == [1]
    assert np.array_equal(_planes(second), raw_second)
    assert [(f.pts, tag) for f, tag in la.flush()] == [(2, "c")] and len(la) == 0


def test_deeper_lookahead_covers_every_frame_still_held():
    counted = []
    la: Lookahead[int] = Lookahead(2, cover_style="blur", on_cover=lambda: counted.append(1))
    frames = [_frame(i) for i in range(3)]
    assert la.push(frames[0], (), 0) == [] and la.push(frames[1], (), 1) == []
    out = la.push(frames[2], [BOX], 2)
    assert [f.pts for f, _ in out] == [0]
    for f in frames[:2]:
        assert _detail(f) < 0.2 * _detail(_frame(f.pts))
    assert _detail(frames[2]) == pytest.approx(_detail(_frame(2)))
    assert len(counted) == 2 == la.covered


def test_a_fallback_frame_is_never_covered_and_reports_nothing():
    """None: the masker fell back (a covered or repeated frame, nothing raw in it; and it
    could not say what it found)."""
    la: Lookahead[int] = Lookahead(1)
    fallback, normal = _frame(0), _frame(1)
    raw = _planes(fallback)
    la.push(fallback, None, 0)
    la.push(normal, [BOX], 1)
    assert np.array_equal(_planes(fallback), raw)
    raw = _planes(normal)
    la.push(_frame(2), None, 2)  # a fallback after: it found nothing to cover in `normal`
    assert np.array_equal(_planes(normal), raw)


def test_a_processor_that_reports_no_faces_holds_nothing_back():
    la: Lookahead[int] = Lookahead(1)

    class Masker(IdentityProcessor):
        new_face_boxes = ()
        cover_style = "blur"

    held = _frame(0)
    assert la.push_processed(Masker(), held, 0) == []
    f = _frame(1)
    out = la.push_processed(IdentityProcessor(), f, 1)  # e.g. a face switch to the relay-only processor
    assert [(x.pts, tag) for x, tag in out] == [(0, 0), (1, 1)]
    assert la.cover_style == "blur"


def test_boxes_are_clipped_to_the_frame_and_odd_sizes_refused():
    f = _frame(0)
    cover_box(f, (-50, -50, 10_000, 10_000), "pixelate")  # whole frame, no error
    assert _detail(f, (0, 0, 320, 240)) < 0.3 * _detail(_frame(0), (0, 0, 320, 240))
    odd = av.VideoFrame(321, 241, "yuv420p")
    with pytest.raises(ValueError):
        cover_box(odd, BOX, "pixelate")
    with pytest.raises(ValueError):
        Lookahead(4)
