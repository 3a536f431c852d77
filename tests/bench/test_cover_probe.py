"""The cover probe (``bench/cover_probe.py``): what each cover style leaves of a small face.

The geometry always runs; the recognizer tests use ``../shared/eval`` and skip without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import cover_probe as P
from bench import eval_lib as L
from edge_server.config import PipelineConfig


def _eval_dir() -> Path:
    try:
        return L.resolve_eval_dir()
    except L.EvalMediaMissing as exc:
        pytest.skip(str(exc))


def _face(x0: float, y0: float, side: float) -> L.Face:
    kps = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float32) * side + [x0, y0]
    return L.Face(np.array([x0, y0, x0 + side, y0 + side], np.float32), 0.9, kps.astype(np.float32))


def test_scaling_a_photo_scales_its_face_with_it() -> None:
    rgb = np.zeros((400, 600, 3), np.uint8)
    small, f = P.scaled_with_face(rgb, _face(100, 50, 200), 40)
    assert small.shape == (80, 120, 3)
    assert f.size == pytest.approx(40)
    np.testing.assert_allclose(f.kps[0], [(100 + 60) / 5, (50 + 80) / 5], atol=1e-4)


@pytest.mark.parametrize("style", ["blur", "pixelate"])
def test_a_cover_changes_the_grown_face_box_and_nothing_else(style: str) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    out = P.covered(rgb, _face(100, 100, 100), style)
    changed = np.any(out != rgb, axis=2)
    ys, xs = np.nonzero(changed)
    assert changed[100:200, 100:200].mean() > 0.9  # the face itself
    assert xs.min() >= 78 and xs.max() <= 221 and ys.min() >= 78 and ys.max() <= 221  # box grown by 0.2, no more


def test_the_default_cover_leaves_small_photo_faces_under_the_leak_line() -> None:
    eval_dir = _eval_dir()
    detector, recognizer = L.IndependentYuNet(eval_dir), L.Recognizer(eval_dir)
    faces = P.probe_faces(eval_dir, detector, limit=12)
    assert len(faces) >= 8
    style = PipelineConfig().cover_style
    judged = 0
    for rgb, pf in faces:
        small, f = P.scaled_with_face(rgb, pf.face, 45)
        raw = P.judge(recognizer, small, small, f)
        assert raw.cosine == pytest.approx(1.0, abs=1e-4)  # the judge sees an uncovered face as itself
        if not raw.identifiable:
            continue
        judged += 1
        assert P.judge(recognizer, small, P.covered(small, f, style), f).cosine < L.LEAK_COSINE, pf.image
    assert judged >= 5


def test_a_covered_face_no_longer_matches_another_photo_of_its_person() -> None:
    eval_dir = _eval_dir()
    rows = P.verification(eval_dir, L.IndependentYuNet(eval_dir), L.Recognizer(eval_dir), ("blur", "pixelate"), (45,), pair_limit=8)
    same = next(r for r in rows if r["pairs"] == "same person")
    assert same["n"] >= 6
    assert same["at_line_raw"] >= 0.75  # a raw 45 px face still gives its person away
    assert same["at_line_blur"] == 0.0 and same["at_line_pixelate"] == 0.0
