"""The onnxruntime detector's near misses (``min_score``), on a real crowd frame."""

from __future__ import annotations

import av
import numpy as np
import pytest

from pipeline.backends.onnx import YuNetDetector
from pipeline.frame_io import LazyRgb, plane_views
from tests.helpers import have_shared_eval


def _crowd_frame(index: int) -> av.VideoFrame:
    root = have_shared_eval()
    if root is None:
        pytest.skip("../shared/eval is absent: needs real faces")
    with av.open(str(root / "videos" / "crowd_1080p.mp4")) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i == index:
                return frame.reformat(format="yuv420p")
    raise AssertionError("crowd_1080p is shorter than expected")


def test_min_score_adds_the_candidates_under_the_line_and_changes_nothing_above_it():
    frame = _crowd_frame(66)  # an old man coming out from behind a pole scores just under 0.5 here
    det = YuNetDetector(detect_width=960, score_threshold=0.5)
    h, w = frame.height, frame.width
    small = LazyRgb(plane_views(frame)).scaled(*det.input_size(h, w))
    faces = det.detect(small, (h, w))
    with_near = det.detect(small, (h, w), 0.3)
    above = [d for d in with_near if d.score >= 0.5]
    near = [d for d in with_near if d.score < 0.5]
    assert len(faces) >= 3, "the crowd's faces"
    assert len(above) == len(faces)
    assert all(np.abs(a.box - b.box).max() < 1e-3 for a, b in zip(above, faces)), "the faces are the same, best first"
    assert near and all(0.3 <= d.score < 0.5 for d in near), "the near misses, and only those"
    assert any(abs((d.box[0] + d.box[2]) / 2 - 1535) < 30 and abs((d.box[1] + d.box[3]) / 2 - 707) < 30 for d in near)
    assert len(det.detect(small, (h, w), 0.9)) == len(faces), "a min_score above the line does not raise it"
