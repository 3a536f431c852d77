from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.backends.onnx import crop_matrix
from pipeline.persona import canonical_layout
from pipeline.tracking import (
    FaceTracker,
    LandmarkSmoother,
    OneEuroFilter,
    grow_box,
    iou,
    roi_from_detection,
    roi_from_landmarks,
)
from pipeline.types import CropRoi, FaceDetection, FaceLandmarks


def _det(x0: float, y0: float, x1: float, y1: float, roll_deg: float = 0.0) -> FaceDetection:
    cx, cy, w = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
    a = math.radians(roll_deg)
    d = np.array([math.cos(a), math.sin(a)]) * w * 0.2
    kps = np.array([[cx, cy] - d, [cx, cy] + d, [cx, cy], [cx - 10, cy + 20], [cx + 10, cy + 20]], np.float32)
    return FaceDetection(np.array([x0, y0, x1, y1], np.float32), 0.9, kps)


def _landmarks(scale: float, dx: float, dy: float, roll_deg: float = 0.0, presence: float = 0.99) -> FaceLandmarks:
    xy = canonical_layout(512) - 256.0
    a = math.radians(roll_deg)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = xy @ r.T * scale + [dx, dy]
    return FaceLandmarks(np.concatenate([pts, np.zeros((468, 1))], axis=1).astype(np.float32), presence)


def test_roi_from_detection_is_scaled_square_with_eye_roll():
    roi = roi_from_detection(_det(100, 100, 200, 220, roll_deg=20))
    assert roi.cx == pytest.approx(150) and roi.cy == pytest.approx(160)
    assert roi.size == pytest.approx(120 * 1.5)
    assert roi.rotation == pytest.approx(math.radians(20), abs=1e-5)


def test_roi_from_landmarks_recovers_roll_and_centre():
    for roll in (-30, 0, 25):
        lm = _landmarks(0.5, 640, 360, roll)
        roi = roi_from_landmarks(lm.points)
        assert math.degrees(roi.rotation) == pytest.approx(roll, abs=0.5)
        assert roi.cx == pytest.approx(640, abs=3) and roi.cy == pytest.approx(360 + 0.5 * (0 - 0), abs=20)


def test_crop_matrix_maps_roi_to_crop_square():
    roi = CropRoi(300, 200, 96, math.radians(30))
    m = crop_matrix(roi, 192)
    centre = m[:, :2] @ [300, 200] + m[:, 2]
    assert centre == pytest.approx([96, 96])
    # a point along the face's own x axis lands on the crop's horizontal line
    p = np.array([300 + 48 * math.cos(math.radians(30)), 200 + 48 * math.sin(math.radians(30))])
    assert (m[:, :2] @ p + m[:, 2]) == pytest.approx([192, 96], abs=1e-6)


def test_one_euro_smooths_jitter_and_follows_motion():
    rng = np.random.default_rng(1)
    f = OneEuroFilter(1.0, 0.05)
    still = [f(np.array([100.0 + rng.normal(0, 1.0)]), i / 30, scale=100)[0] for i in range(60)]
    assert np.std(still[20:]) < 0.5  # jitter of 1 px std is cut down
    g = OneEuroFilter(1.0, 0.05)
    moving = [g(np.array([i * 10.0]), i / 30, scale=100)[0] for i in range(60)]
    assert abs(moving[-1] - 590.0) < 15  # a fast move is followed with little lag


def _smoothed_face(smoother, sway_px: float, noise_px: float, frames: int = 150) -> tuple[float, np.ndarray]:
    """A 200 px face of 468 points swaying side to side (0.8 Hz) and a little up and down,
    each point with its own landmark noise: the mean distance (px) of the smoothed points
    from the true ones after the first second, and the smoothed points over that time."""
    rng = np.random.default_rng(3)
    face = rng.uniform(-100, 100, (468, 3))
    errors, points = [], []
    for i in range(frames):
        t = i / 30
        true = face + [sway_px * math.sin(2 * math.pi * 0.8 * t), 0.3 * sway_px * math.sin(2 * math.pi * 0.5 * t), 0.0]
        out = smoother(true + rng.normal(0, noise_px, face.shape), t, scale=200.0)
        if i >= 30:
            errors.append(np.linalg.norm(out[:, :2] - true[:, :2], axis=1).mean())
            points.append(out[:, :2])
    return float(np.mean(errors)), np.array(points)


def test_a_swaying_head_is_followed_closely_and_a_still_one_does_not_jitter():
    """The smoother follows the face's centre closely and smooths the points about it: a
    head swaying 30 px (a talking head) is not trailed as the per-point filter trails it,
    and a still face's jitter is cut as much as that filter cuts it."""
    plain, _ = _smoothed_face(OneEuroFilter(1.0, 0.05), 30.0, 0.6)
    split, _ = _smoothed_face(LandmarkSmoother(1.0, 0.05), 30.0, 0.6)
    assert plain > 2.5  # the per-point filter alone trails the sway by 3-4 px
    assert split < 0.35 * plain and split < 1.0
    _, still_plain = _smoothed_face(OneEuroFilter(1.0, 0.05), 0.0, 1.0)
    _, still = _smoothed_face(LandmarkSmoother(1.0, 0.05), 0.0, 1.0)
    jitter = np.abs(np.diff(still, axis=0)).mean()  # frame-to-frame movement of a still face's points
    assert jitter < 0.25  # of 1 px noise (about 1.1 px frame to frame unfiltered)
    assert jitter < 1.1 * np.abs(np.diff(still_plain, axis=0)).mean()


def test_a_blink_is_followed_by_the_lids():
    """A blink (the lid gap 10 -> 5 -> 1 -> 1 -> 5 -> 10 px, a frame apart, at 30 fps):
    with the lids in ``features`` the smoothed gap closes nearly as far as the lids do (to
    1.5 px); at the rest's beta only two thirds of the way (to 4.2 px), a frame late."""
    rng = np.random.default_rng(5)
    face = rng.uniform(-100, 100, (468, 3))
    upper, lower = np.arange(10), np.arange(10, 20)
    face[lower, 1] = face[upper, 1] + 10.0
    gaps = [10.0] * 20 + [5.0, 1.0, 1.0, 5.0] + [10.0] * 10

    def smallest_gap(smoother) -> float:
        seen = []
        for i, gap in enumerate(gaps):
            pts = face.copy()
            pts[lower, 1] = face[upper, 1] + gap
            out = smoother(pts + rng.normal(0, 0.2, pts.shape), i / 30, scale=200.0)
            seen.append(float((out[lower, 1] - out[upper, 1]).mean()))
        return min(seen)

    assert smallest_gap(LandmarkSmoother(1.0, 0.05, features=np.arange(20))) < 2.0
    assert smallest_gap(LandmarkSmoother(1.0, 0.05)) > 3.5


def test_tracker_starts_tracks_holds_lost_faces_and_reuses_slot():
    tr = FaceTracker(hold_s=1.0)
    assert tr.needs_detection()
    tr.apply_detections([_det(500, 300, 700, 520)], now=0.0)
    assert len(tr.tracks) == 1 and tr.tracks[0].slot == 0
    track = tr.tracks[0]
    assert tr.update(track, _landmarks(0.55, 600, 410), now=0.033)
    assert not tr.needs_detection()
    # the same face detected again is not a new track
    tr.apply_detections([_det(505, 300, 705, 520)], now=0.066)
    assert len(tr.tracks) == 1
    # landmarks lose the face: it is held at its last box
    assert not tr.update(track, _landmarks(0.55, 600, 410, presence=0.1), now=0.1)
    assert not tr.tracks and len(tr.held) == 1 and tr.held[0].reason == "lost"
    assert tr.needs_detection()
    tr.expire(0.9)
    assert tr.held
    tr.expire(1.2)
    assert not tr.held


def test_held_face_refreshed_while_detector_sees_it_and_slot_reused():
    tr = FaceTracker(hold_s=0.5)
    tr.apply_detections([_det(500, 300, 700, 520)], 0.0)
    tr.update(tr.tracks[0], None, 0.0)  # landmarks rejected it from the start
    assert tr.held[0].reason == "no_landmarks"
    tr.refresh_holds([_det(510, 300, 710, 520)], 0.4)
    tr.expire(0.8)
    assert tr.held  # still seen by the detector at 0.4: held until 0.9
    tr.apply_detections([_det(510, 300, 710, 520)], 0.8)
    assert tr.tracks[0].slot == 0


def test_second_face_gets_next_slot_and_dedupe_keeps_older():
    tr = FaceTracker()
    tr.apply_detections([_det(100, 100, 200, 220), _det(600, 100, 700, 220)], 0.0)
    assert sorted(t.slot for t in tr.tracks) == [0, 1]
    tr.tracks[1].box = tr.tracks[0].box.copy()
    tr.dedupe()
    assert len(tr.tracks) == 1 and tr.tracks[0].id == 0


def test_iou_and_grow_box():
    a = np.array([0, 0, 10, 10], np.float32)
    assert iou(a, a) == pytest.approx(1.0)
    assert iou(a, np.array([5, 0, 15, 10], np.float32)) == pytest.approx(1 / 3)
    g = grow_box(a, 0.5, (12, 12))
    assert list(g) == [0, 0, 12, 12]
