"""The masker on real footage, with faults injected into real stages.

Every check compares the face region of each output frame with the input's: the raw face
must never come back, whatever the stages do. Needs ../shared/eval (real faces).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from bench.mask_eval import iter_frames
from edge_server.config import PipelineConfig
from pipeline.backends import Backend, create_backend
from pipeline.backends.onnx import YuNetDetector
from pipeline.lookahead import Lookahead
from pipeline.frame_io import FullRgb
from pipeline.masker import EDGE_LOOK_MARGIN, FaceMasker
from pipeline.stage import IdentityProcessor
from pipeline.tracking import inside_share
from pipeline.types import FaceDetection, FaceLandmarks
from tests.helpers import have_shared_eval

N_FRAMES = 24


@pytest.fixture(scope="module")
def face_frames() -> list[av.VideoFrame]:
    """A real talking face, 1280x720, with its boxes from an independent full-resolution pass."""
    root = have_shared_eval()
    if root is None:
        pytest.skip("../shared/eval is absent: the masker's fault tests need real faces")
    frames = []
    with av.open(str(root / "videos" / "lp_s18.mp4")) as c:
        for f in c.decode(video=0):
            frames.append(f.reformat(format="yuv420p"))
            if len(frames) == N_FRAMES:
                break
    return frames


@pytest.fixture(scope="module")
def face_boxes(face_frames) -> list[np.ndarray]:
    det = YuNetDetector(detect_width=4096)
    boxes = []
    for f in face_frames:
        found = det.detect(f.to_ndarray(format="rgb24"))
        assert found, "the reference detector must see the face in every test frame"
        boxes.append(found[0].box)
    return boxes


def _inner(box: np.ndarray) -> tuple[slice, slice]:
    """The middle of the face box (eyes, nose, mouth): what must never pass through."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return slice(int(y0 + 0.2 * h), int(y1 - 0.15 * h)), slice(int(x0 + 0.15 * w), int(x1 - 0.15 * w))


def _detail(rgb: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return grey - cv2.GaussianBlur(grey, (0, 0), 2.0)


def face_detail_correlation(inp: av.VideoFrame, out: av.VideoFrame, box: np.ndarray) -> float:
    """Correlation of the fine detail (eyes, brows, lips, skin texture) inside the face.

    ~1 when the real face passes through (even re-encoded); ~0 once it is swapped,
    pixelated or blurred.
    """
    ys, xs = _inner(box)
    a = _detail(np.ascontiguousarray(inp.to_ndarray(format="rgb24")[ys, xs])).ravel()
    b = _detail(np.ascontiguousarray(out.to_ndarray(format="rgb24")[ys, xs])).ravel()
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def assert_face_masked(inp: av.VideoFrame, out: av.VideoFrame, box: np.ndarray, what: str) -> None:
    corr = face_detail_correlation(inp, out, box)
    assert corr < 0.3, f"{what}: the face's detail came through (correlation {corr:.2f} with the input)"


def _config(**kw) -> PipelineConfig:
    base = dict(deadline_ms=0)
    base.update(kw)
    return PipelineConfig(**base)


def _run(masker: FaceMasker, frames, boxes, what: str) -> list[av.VideoFrame]:
    outs = []
    for i, (f, box) in enumerate(zip(frames, boxes)):
        out = masker.process(f)
        assert (out.width, out.height, out.pts) == (f.width, f.height, f.pts)
        assert_face_masked(f, out, box, f"{what}, frame {i}")
        outs.append(out)
    return outs


class _Wrap:
    """Wraps a real stage to inject a fault on chosen calls (a fault injector, not a mock)."""

    def __init__(self, inner, fault, calls: set[int] | None = None) -> None:
        self.inner, self.fault, self.calls, self.n, self.armed = inner, fault, calls, 0, True

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _call(self, method: str, *args):
        if not self.armed:
            return getattr(self.inner, method)(*args)
        i, self.n = self.n, self.n + 1
        if self.calls is None or i in self.calls:
            return self.fault(getattr(self.inner, method), *args)
        return getattr(self.inner, method)(*args)

    def detect(self, *args):
        return self._call("detect", *args)

    def landmarks(self, *args):
        return self._call("landmarks", *args)

    def landmarks_from_crop(self, *args):  # what the masker calls: (crop, roi) in place of (frame, roi)
        return self._call("landmarks_from_crop", *args)

    def segment(self, *args):
        return self._call("segment", *args)


@pytest.fixture(scope="module")
def backend() -> Backend:
    return create_backend()


def _masker(backend: Backend, mode: str = "anonymize", **kw) -> tuple[FaceMasker, Counter]:
    seen: Counter = Counter()
    b = Backend(kw.pop("detector", backend.detector), kw.pop("landmarker", backend.landmarker), kw.pop("segmenter", backend.segmenter))
    wrapped = [s for s in (b.detector, b.landmarker, b.segmenter) if isinstance(s, _Wrap)]
    for w in wrapped:
        w.armed = False  # the masker's warm-up calls pass through untouched
    masker = FaceMasker(_config(**kw), mode=mode, backend=b, on_cover=lambda r: seen.update([r]), seed=7)
    for w in wrapped:
        w.armed = True
    return masker, seen


@pytest.mark.parametrize("mode", ["anonymize", "persona", "blur", "pixelate"])
def test_every_mode_masks_every_frame(backend, face_frames, face_boxes, mode):
    masker, seen = _masker(backend, mode)
    try:
        assert face_detail_correlation(face_frames[0], face_frames[0], face_boxes[0]) > 0.99  # the check can fail
        _run(masker, face_frames, face_boxes, mode)
        assert masker.tracker.tracks, "the face should be tracked"
        if mode in ("anonymize", "persona"):
            assert not seen, f"a clean run should need no guard covers, got {dict(seen)}"
    finally:
        masker.close()


def test_detector_runs_every_n_frames_while_tracking(backend, face_frames, face_boxes):
    calls = _Wrap(backend.detector, lambda f, *a: f(*a), calls=set())
    masker, _ = _masker(backend, detector=calls, detect_every=5, full_detect_every=1)
    try:
        _run(masker, face_frames[:20], face_boxes[:20], "tracking")
        assert calls.n == 4  # frames 0, 5, 10, 15, each a whole-frame pass
    finally:
        masker.close()


def _cut_in_frames(cut: int, n: int = 12, guest_at: tuple[int, int, int, int] = (640, 0, 1280, 720)) -> list[av.VideoFrame]:
    """A tracked face on the left; at frame ``cut`` a second real person cuts in on the
    right (into ``guest_at``, x0 y0 x1 y1; by default the whole right half), as a camera
    switch or a guest joining the shot would."""
    root = have_shared_eval()
    if root is None:
        pytest.skip("../shared/eval is absent: this test needs real faces")

    def decode(name: str, count: int) -> list[np.ndarray]:
        out = []
        with av.open(str(root / "videos" / name)) as c:
            for f in c.decode(video=0):
                out.append(f.to_ndarray(format="rgb24"))
                if len(out) == count:
                    return out
        return out

    host, guest = decode("lp_s18.mp4", n), decode("vr_2.mp4", n)
    empty_right = cv2.resize(host[0][:, :200], (640, 720))  # the host's backdrop, nobody in it
    frames = []
    for i in range(n):
        img = np.zeros((720, 1280, 3), np.uint8)
        img[180:540, :640] = cv2.resize(host[i], (640, 360))
        img[:, 640:] = empty_right
        if i >= cut:
            gx0, gy0, gx1, gy1 = guest_at
            img[gy0:gy1, gx0:gx1] = cv2.resize(guest[i], (gx1 - gx0, gy1 - gy0))
        f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        f.pts, f.time_base = i, Fraction(1, 30)
        frames.append(f)
    return frames


@pytest.fixture(scope="module")
def second_face_cuts_in() -> tuple[list[av.VideoFrame], int]:
    """The cut at frame 7, between two detector runs (detect_every 5: frames 0, 5, 10)."""
    return _cut_in_frames(7), 7


def _unmasked_frames(backend, frames, **config) -> list[int]:
    reference = YuNetDetector(detect_width=4096)
    masker, _ = _masker(backend, **config)
    unmasked = []
    try:
        for i, f in enumerate(frames):
            out = masker.process(f)
            for face in reference.detect(f.to_ndarray(format="rgb24")):
                if face_detail_correlation(f, out, face.box) >= 0.3:
                    unmasked.append(i)
    finally:
        masker.close()
    return unmasked


@pytest.mark.parametrize("every", [1, 2, 3])
def test_a_face_cutting_in_between_detector_runs(backend, second_face_cuts_in, every):
    """The person rule covers the newcomer at once: the picture changed outside the tracked
    face, so the segmenter runs on that frame whatever segment_every allows."""
    frames, cut = second_face_cuts_in
    assert _unmasked_frames(backend, frames, detect_every=5, segment_every=every) == []


@pytest.mark.parametrize("cut", [5, 10])
def test_a_newcomer_the_detector_misses_on_its_own_frame_is_covered(backend, cut):
    """The cut lands on a detector frame and the detector never sees the newcomer (a
    profile, a hand over the face): the picture changed, so that frame is segmented too and
    the person rule covers the head from the first frame on."""
    frames = _cut_in_frames(cut, 13)
    left_only = _Wrap(backend.detector, lambda f, *a: [d for d in f(*a) if (d.box[0] + d.box[2]) / 2 < 640])
    assert _unmasked_frames(backend, frames, detector=left_only, detect_every=5, segment_every=3) == []


def test_a_face_found_a_frame_late_is_covered_in_the_frame_held_back(backend):
    """A guest cuts in on frame 7 and the detector sees them only from frame 8 on (a face
    stepping out from behind another head, at the detector's limit; crowd_1080p frame 93).
    No person rule here (a crowd's person mask is one blob): frame 7 leaves the masker raw,
    and the lookahead covers it there from what frame 8 found."""
    frames, cut = _cut_in_frames(7), 7
    blind = {"on": False}
    late = _Wrap(backend.detector, lambda f, *a: [d for d in f(*a) if not blind["on"] or (d.box[0] + d.box[2]) / 2 < 640])
    reference = YuNetDetector(detect_width=4096)
    guest = [d.box for d in reference.detect(frames[cut].to_ndarray(format="rgb24")) if (d.box[0] + d.box[2]) / 2 >= 640]
    assert guest, "the reference detector must see the guest"
    masker, _ = _masker(backend, detector=late, segmenter=None, detect_every=1, full_detect_every=1)
    held: Lookahead[int] = Lookahead(1)
    raw_out: dict[int, av.VideoFrame] = {}
    released: list[tuple[av.VideoFrame, int]] = []
    try:
        for i, f in enumerate(frames):
            blind["on"] = i == cut
            out = masker.process(f)
            if i == cut:
                raw_out[i] = av.VideoFrame.from_ndarray(out.to_ndarray(), format="yuv420p")  # as it left the masker
                assert masker.new_face_boxes == ()
            if i == cut + 1:
                assert len(masker.new_face_boxes) == 1, "the guest is new on the frame after the cut"
            released += held.push_processed(masker, out, i)
        released += held.flush()
    finally:
        masker.close()
    assert [i for _, i in released] == list(range(len(frames))), "every frame leaves, once, in order"
    assert face_detail_correlation(frames[cut], raw_out[cut], guest[0]) >= 0.3, "the check can fail: the masker alone left the guest raw"
    outs = dict((i, f) for f, i in released)
    for i in range(cut, len(frames)):
        for d in reference.detect(frames[i].to_ndarray(format="rgb24")):
            assert_face_masked(frames[i], outs[i], d.box, f"frame {i}")
    assert held.covered == 1


def test_new_face_boxes_name_the_faces_first_masked_and_nothing_after_a_fallback(backend, face_frames, face_boxes):
    failing = _Wrap(backend.landmarker, lambda f, *a: (_ for _ in ()).throw(RuntimeError("boom")), calls={3})
    masker, _ = _masker(backend, landmarker=failing)
    try:
        masker.process(face_frames[0])
        (box,) = masker.new_face_boxes
        assert inside_share(face_boxes[0], box) > 0.9, "the face's place, grown as a held face's cover"
        masker.process(face_frames[1])
        assert masker.new_face_boxes == (), "the same face on the next frame is not new"
        masker.process(face_frames[2])
        masker.process(face_frames[3])  # the landmark stage raises: a fallback frame
        assert masker.new_face_boxes is None
    finally:
        masker.close()


def test_between_whole_frame_passes_the_detector_looks_only_where_the_picture_changed(backend):
    """The guest cuts in on frame 10, a detector frame that is not a whole-frame pass
    (full_detect_every 30): that run scans where the guest appeared, far less than the
    frame, and finds the guest there; the tracked host is not scanned again."""
    frames = _cut_in_frames(10, 13, guest_at=(840, 160, 1160, 520))  # a third of the right half
    inputs: list[tuple[int, int]] = []
    seen = _Wrap(backend.detector, lambda f, rgb, *a: inputs.append(rgb.shape[:2]) or f(rgb, *a))
    masker, _ = _masker(backend, detector=seen, detect_every=5, full_detect_every=30)
    fw, fh = masker.backend.detector.input_size(720, 1280)
    try:
        for i, f in enumerate(frames):
            inputs.clear()
            out = masker.process(f)
            if i == 0:
                assert inputs == [(fh, fw)], "the first run scans the whole frame"
            elif i in (5, 10):
                assert sum(h * w for h, w in inputs) < 0.5 * fh * fw, f"frame {i} scanned {inputs}"
            else:
                assert inputs == []
            if i == 10:
                assert len(masker.tracker.tracks) == 2, "the guest was not found by the partial scan"
                guest = next(t for t in masker.tracker.tracks if t.box[0] > 640)
                assert_face_masked(f, out, guest.box, "the guest on the frame they were found")
    finally:
        masker.close()


@pytest.mark.parametrize("near_miss_score", [0.3, 0.0])
def test_a_near_miss_is_looked_at_again_on_the_next_frame(backend, near_miss_score):
    """The guest cuts in on frame 5, a detector frame (a partial scan), and the detector
    scores them just under its line there (a face coming into view; crowd_1080p's man behind
    a pole scores 0.46 the frame before 0.70). pipeline.near_miss_score: the next frame runs
    the detector where the near miss was, though nothing changed there since, and finds the
    guest, a frame late, where the lookahead still covers the frame before. Off, the guest
    waits for frame 10, the next detector frame, and is raw on frames 6-9."""
    cut = 5
    frames = _cut_in_frames(cut, 8, guest_at=(840, 160, 1160, 520))
    line = backend.detector.score_threshold
    under = {"on": False}

    def scored_under(detect, *args):
        found = detect(*args)
        if not under["on"]:
            return found
        floor = args[2] if len(args) > 2 else None  # the masker asks for near misses down to this
        return [FaceDetection(d.box, line - 0.1, d.keypoints) for d in found if floor is not None and floor <= line - 0.1]

    demoted = _Wrap(backend.detector, scored_under)
    reference = YuNetDetector(detect_width=4096)
    guest = [d.box for d in reference.detect(frames[cut + 1].to_ndarray(format="rgb24")) if (d.box[0] + d.box[2]) / 2 >= 640]
    assert guest, "the reference detector must see the guest"
    masker, _ = _masker(backend, detector=demoted, segmenter=None, detect_every=5, full_detect_every=30,
                        near_miss_score=near_miss_score)
    try:
        for i, f in enumerate(frames):
            under["on"] = i == cut
            out = masker.process(f)
            if i == cut:
                assert len(masker.tracker.tracks) == 1 and masker.new_face_boxes == (), "the guest is missed on the cut"
            if i == cut + 1:
                if near_miss_score:
                    assert len(masker.new_face_boxes) == 1, "the near miss is looked at again and the guest found"
                    assert_face_masked(f, out, guest[0], "the guest on the frame after the near miss")
                else:
                    assert masker.new_face_boxes == (), "no detector run until frame 10"
                    assert face_detail_correlation(f, out, guest[0]) >= 0.3, "the check can fail: the guest is raw"
    finally:
        masker.close()


def test_a_weak_detection_of_a_tracked_or_held_face_is_no_near_miss(backend):
    """Only candidates apart from the faces already followed are near misses: a held face's
    own weak detection taken for a new face let a crowd_1080p hold lapse (docs/benchmarks.md)."""
    masker, _ = _masker(backend)
    try:
        held_box = np.array([100, 100, 160, 170], np.float32)
        tracked = [np.array([400, 100, 480, 190], np.float32)]
        followed = tracked + [held_box]  # what process() hands over: the tracked and the held faces
        weak = [FaceDetection(b + 2, 0.4, np.zeros((5, 2), np.float32)) for b in (held_box, tracked[0])]
        apart = FaceDetection(np.array([700, 300, 760, 370], np.float32), 0.4, np.zeros((5, 2), np.float32))
        face = FaceDetection(np.array([900, 300, 980, 390], np.float32), 0.8, np.zeros((5, 2), np.float32))
        faces, near = masker._split_near_misses(weak + [apart, face], 0.5, followed)
        assert faces == [face]
        assert len(near) == 1 and np.allclose(near[0], apart.box)
        masker._note_near_misses(near)
        assert masker._near_miss_new, "a near miss the run before did not see brings the next run forward"
        masker._note_near_misses(masker._split_near_misses([apart], 0.5, followed)[1])
        assert not masker._near_miss_new, "the same one again does not"
    finally:
        masker.close()


def test_near_partial_scans_are_one_detector_run(backend):
    """pipeline.scan_call_px: a detector run costs about as much as 12,000 px of input on its
    own, so two changed areas close together are scanned in one run (their joint box), and
    two far apart stay two. 0 joins only overlapping ones."""
    masker, _ = _masker(backend)
    try:
        # at the detector's scale (half) and aligned to 32 px: 96x96 each, 32 px apart
        near = ((100, 100, 228, 228), (340, 100, 468, 228))
        (one,) = masker._scan_boxes(near, (720, 1280))
        (x0, y0, x1, y1), (cw, ch) = one
        assert x0 <= 100 and y0 <= 100 and x1 >= 468 and y1 >= 228, "the joint box holds both areas"
        assert (cw, ch) == (224, 96)
        far = ((0, 0, 128, 128), (1152, 592, 1280, 720))
        assert len(masker._scan_boxes(far, (720, 1280))) == 2
        masker.config.scan_call_px = 0
        assert len(masker._scan_boxes(near, (720, 1280))) == 2
    finally:
        masker.close()


def test_a_head_the_person_rule_covers_is_scanned_on_every_detector_run(backend, face_frames, face_boxes):
    """The whole-frame passes miss the face (injected: blind at the whole frame's input
    size) and the picture barely changes: the head the person rule covered is scanned on the
    next detector run anyway, and the face is found there."""
    full_hw = backend.detector.input_size(720, 1280)[::-1]
    blind_whole = _Wrap(backend.detector, lambda f, rgb, *a: [] if rgb.shape[:2] == full_hw else f(rgb, *a))
    masker, seen = _masker(backend, detector=blind_whole, detect_every=5, full_detect_every=30)
    try:
        _run(masker, face_frames[:1], face_boxes[:1], "the first frame, covered by the person rule")
        assert seen["person_no_face"] >= 1 and not masker.tracker.tracks
        _run(masker, face_frames[1:4], face_boxes[1:4], "the next frames")
        assert masker.tracker.tracks, "the face was not found in the covered head"
    finally:
        masker.close()


def test_a_partial_scans_new_face_is_kept_only_if_a_second_look_finds_it(backend):
    """The second look with context (``FaceMasker._confirmed``) keeps the guest and drops
    what a crop alone made up: a piece of the tracked host cut by a crop's edge, and a box
    of empty backdrop."""
    from pipeline.frame_io import LazyRgb, plane_views
    from pipeline.types import FaceDetection

    frame = _cut_in_frames(0, 1, guest_at=(840, 160, 1160, 520))[0]
    reference = YuNetDetector(detect_width=4096).detect(frame.to_ndarray(format="rgb24"))
    host = next(d for d in reference if d.box[0] < 640)
    guest = next(d for d in reference if d.box[0] > 640)
    hx0, hy0, hx1, hy1 = host.box
    half_host = FaceDetection(np.array([hx0 + 0.6 * (hx1 - hx0), hy0, hx1 + 0.4 * (hx1 - hx0), hy1], np.float32), 0.9, host.keypoints)
    backdrop = FaceDetection(np.array([680, 600, 760, 700], np.float32), 0.9, np.zeros((5, 2), np.float32))
    masker, _ = _masker(backend)
    try:
        kept = masker._confirmed(LazyRgb(plane_views(frame)), [half_host, guest, backdrop], [host.box], (720, 1280))
    finally:
        masker.close()
    assert len(kept) == 1
    assert math.isclose(float(kept[0].box[0]), float(guest.box[0]), abs_tol=20.0)


def test_without_the_change_check_a_reused_mask_lets_the_newcomer_through(backend, second_face_cuts_in, monkeypatch):
    """Why the check exists: a mask from the frame before the cut sees nobody on the right."""
    import pipeline.guard

    monkeypatch.setattr(pipeline.guard, "CHANGE_LEVEL", 1e9)  # nothing ever counts as changed
    frames, cut = second_face_cuts_in
    assert _unmasked_frames(backend, frames, detect_every=5, segment_every=2) == [cut]


def test_the_detector_thread_changes_nothing_but_the_time(backend, face_frames, face_boxes):
    outputs = {}
    for parallel in (True, False):
        masker, seen = _masker(backend, parallel_detect=parallel, detect_every=3)
        try:
            outputs[parallel] = [masker.process(f).to_ndarray() for f in face_frames[:12]]
            assert masker.tracker.tracks and not seen
        finally:
            masker.close()
    assert all((a == b).all() for a, b in zip(outputs[True], outputs[False]))


def test_a_detector_failing_on_its_thread_covers_the_frame(backend, face_frames, face_boxes):
    def boom(f, *a):
        raise RuntimeError("injected detector failure")

    flaky = _Wrap(backend.detector, boom, calls={0, 2})  # frame 0, and the scheduled detection on frame 5
    masker, seen = _masker(backend, detector=flaky, detect_every=5, parallel_detect=True)
    try:
        _run(masker, face_frames[:12], face_boxes[:12], "detector exceptions")
        assert seen["error"] == 2
    finally:
        masker.close()


@pytest.mark.parametrize("grow", [0.9, 2.0])
def test_face_grow_out_of_range_is_refused(backend, grow):
    with pytest.raises(ValueError, match="face_grow"):
        FaceMasker(_config(face_grow=grow), backend=backend)


@pytest.mark.parametrize("every, expected", [(1, 17), (2, 9), (3, 7)])
def test_segmenter_runs_every_n_frames(backend, face_frames, face_boxes, every, expected):
    calls = _Wrap(backend.segmenter, lambda f, *a: f(*a), calls=set())
    masker, _ = _masker(backend, segmenter=calls, detect_every=5, segment_every=every)
    try:
        _run(masker, face_frames[:20], face_boxes[:20], f"segment_every={every}")
        # every=1: all but the detector's frames 5, 10, 15 (they reuse the previous frame's mask);
        # every=2: frames 0, 2, 4, 6, 8, 11, 13, 16, 18 (the detector's frames 10 and 15 reuse a
        # mask two frames old rather than segment too); every=3 (the default): 7 of 20. The
        # talking head moves only inside its tracked face, which the change check leaves out.
        assert calls.n == expected
    finally:
        masker.close()


def test_detector_misses_after_first_frame_keep_the_face_masked(backend, face_frames, face_boxes):
    blind = _Wrap(backend.detector, lambda f, *a: [], calls=set(range(1, 1000)))
    masker, _ = _masker(backend, detector=blind, detect_every=2)
    try:
        _run(masker, face_frames, face_boxes, "detector blind after frame 0")
    finally:
        masker.close()


def test_a_face_the_detector_never_finds_is_covered_through_segmentation(backend, face_frames, face_boxes):
    blind = _Wrap(backend.detector, lambda f, *a: [])
    masker, seen = _masker(backend, detector=blind)
    try:
        _run(masker, face_frames[:8], face_boxes[:8], "detector always blind")
        assert seen["person_no_face"] >= 8
    finally:
        masker.close()


@pytest.fixture(scope="module", params=["letterboxed", "square"])
def close_up(request) -> tuple[list[av.VideoFrame], list[np.ndarray]]:
    """lp_d3 (512x512, a face filling it under a head of hair) letterboxed into 1280x720,
    as a square webcam crop is on a 16:9 stream, and at its own square size (the segmenter
    squeezes both into 256x144, differently); boxes from a full-resolution pass."""
    root = have_shared_eval()
    if root is None:
        pytest.skip("../shared/eval is absent")
    frames = list(iter_frames(root / "videos" / "lp_d3.mp4", 8, (1280, 720) if request.param == "letterboxed" else None))
    det = YuNetDetector(detect_width=4096)
    return frames, [det.detect(f.to_ndarray(format="rgb24"))[0].box for f in frames]


def test_a_close_up_is_swapped_not_covered_as_a_faceless_head(backend, close_up):
    """The person rule counted this head as faceless on every frame and pixelated the swap."""
    frames, boxes = close_up
    masker, seen = _masker(backend)
    try:
        _run(masker, frames, boxes, "close-up")
        assert masker.tracker.tracks and not seen, f"no guard cover expected, got {dict(seen)}"
    finally:
        masker.close()


def test_a_close_up_the_detector_never_finds_is_still_covered(backend, close_up):
    frames, boxes = close_up
    blind = _Wrap(backend.detector, lambda f, *a: [])
    masker, seen = _masker(backend, detector=blind)
    try:
        _run(masker, frames, boxes, "close-up, detector always blind")
        assert seen["person_no_face"] >= len(frames) - 1  # the first frame is covered whole
    finally:
        masker.close()


@pytest.mark.parametrize("size", [None, (1280, 720)])
def test_a_faceless_heads_cover_reaches_the_chin_under_tall_hair(backend, size):
    """lp_d6: hair gathered in a bun on top makes the person's blob start well above the
    forehead. With the detector blind the person rule's cover is all there is; at 1.4 head
    widths it stopped at her mouth (a third of the face box's rows left as they came)."""
    root = have_shared_eval()
    if root is None:
        pytest.skip("../shared/eval is absent")
    frames = list(iter_frames(root / "videos" / "lp_d6.mp4", 8, size))
    reference = YuNetDetector(detect_width=4096)
    blind = _Wrap(backend.detector, lambda f, *a: [])
    masker, seen = _masker(backend, detector=blind)
    try:
        for i, frame in enumerate(frames):
            out = masker.process(frame)
            if i == 0:
                continue  # covered whole: nothing detected yet
            (face,) = reference.detect(frame.to_ndarray(format="rgb24"))
            x0, y0, x1, y1 = np.clip(face.box, 0, [frame.width, frame.height] * 2).astype(int)
            diff = np.abs(frame.to_ndarray(format="rgb24")[y0:y1, x0:x1].astype(np.int16) - out.to_ndarray(format="rgb24")[y0:y1, x0:x1]).mean(axis=2)
            unchanged_rows = float(((diff < 3).mean(axis=1) > 0.5).mean())
            assert unchanged_rows <= 0.03, f"frame {i}: {unchanged_rows:.0%} of the face box's rows came through"
        assert seen["person_no_face"] >= len(frames) - 1
    finally:
        masker.close()


def test_lost_landmarks_hold_a_cover_at_the_last_place(backend, face_frames, face_boxes):
    def absent(f, rgb, roi):
        lm = f(rgb, roi)
        return FaceLandmarks(lm.points, 0.0)

    flaky = _Wrap(backend.landmarker, absent, calls=set(range(3, 12)))
    masker, seen = _masker(backend, landmarker=flaky, segmentation=False)
    masker.backend.segmenter = None
    try:
        _run(masker, face_frames, face_boxes, "landmarks lost on frames 3-11")
        assert seen["lost"] >= 1
    finally:
        masker.close()


def test_stage_exceptions_cover_the_frame(backend, face_frames, face_boxes):
    def boom(f, *a):
        raise RuntimeError("injected landmark failure")

    flaky = _Wrap(backend.landmarker, boom, calls={0, 6, 7})
    masker, seen = _masker(backend, landmarker=flaky)
    try:
        _run(masker, face_frames[:12], face_boxes[:12], "landmark exceptions")
        assert seen["error"] == 3
    finally:
        masker.close()


def test_a_slow_stage_misses_the_deadline_and_the_frame_is_covered(backend, face_frames, face_boxes):
    release = threading.Event()

    def stall(f, *a):
        release.wait(2.0)
        return f(*a)

    slow = _Wrap(backend.segmenter, stall, calls={4})
    masker, seen = _masker(backend, segmenter=slow, deadline_ms=150, segment_every=1)
    try:
        for i, (f, box) in enumerate(zip(face_frames[:10], face_boxes[:10])):
            t = time.perf_counter()
            out = masker.process(f)
            took = time.perf_counter() - t
            assert took < 1.0, f"frame {i} waited {took:.2f} s for a stalled stage"
            assert_face_masked(f, out, box, f"slow segmenter, frame {i}")
            if i == 6:
                release.set()
                time.sleep(0.2)
        assert seen["deadline"] >= 2  # the stalled frame and the ones offered while it ran
    finally:
        release.set()
        masker.close()


def test_first_frame_failure_is_a_covered_frame(backend, face_frames, face_boxes):
    def boom(f, *a):
        raise RuntimeError("injected detector failure")

    broken = _Wrap(backend.detector, boom)
    masker, seen = _masker(backend, detector=broken)
    try:
        _run(masker, face_frames[:3], face_boxes[:3], "detector raising")
        assert seen["error"] == 3
    finally:
        masker.close()


def test_timings_are_reported(backend, face_frames):
    masker, _ = _masker(backend)
    try:
        masker.process(face_frames[0])
        assert {"detect", "landmarks", "swap", "total"} <= set(masker.last_timings)
        assert masker.last_timings["total"] >= masker.last_timings["landmarks"]
    finally:
        masker.close()


class _RecordingSwapper:
    """The real swapper, noting which persona went on which face."""

    def __init__(self) -> None:
        from pipeline.swap import MeshSwapper

        self.inner = MeshSwapper()
        self.calls: list[tuple[str, str, float]] = []

    def swap(self, region, points, persona) -> None:
        xy = np.asarray(points)[:, :2]
        self.calls.append((persona.id, persona.kind, float(np.ptp(xy, axis=0).max())))
        self.inner.swap(region, points, persona)


def _turn(points: np.ndarray, degrees: float) -> np.ndarray:
    """The mesh turned about the vertical axis through its centre (x and depth mix)."""
    a = math.radians(degrees)
    c = points.mean(axis=0)
    p = points - c
    x = p[:, 0] * math.cos(a) + p[:, 2] * math.sin(a)
    z = -p[:, 0] * math.sin(a) + p[:, 2] * math.cos(a)
    return (np.stack([x, p[:, 1], z], axis=1) + c).astype(np.float32)


def test_a_head_turned_too_far_is_covered_then_swapped_again(backend, face_frames, face_boxes):
    """Frames 4-11: the landmark model reports the head turned 60 degrees (injected on the
    real points). Those frames are covered, counted, and not swapped; once the head turns
    back the persona returns."""
    frame_now = [-1]

    def turn(f, rgb, roi):
        lm = f(rgb, roi)
        return FaceLandmarks(_turn(lm.points, 60.0), 1.0) if 4 <= frame_now[0] < 12 else lm

    turned = _Wrap(backend.landmarker, turn)
    swapper = _RecordingSwapper()
    seen: Counter = Counter()
    turned.armed = False
    masker = FaceMasker(_config(), mode="anonymize", backend=Backend(backend.detector, turned, backend.segmenter),
                        swapper=swapper, on_cover=lambda r: seen.update([r]), seed=7)
    turned.armed = True
    swapped = []
    try:
        for i, (f, box) in enumerate(zip(face_frames, face_boxes)):
            swapper.calls.clear()
            frame_now[0] = i
            out = masker.process(f)
            assert_face_masked(f, out, box, f"frame {i}")
            swapped.append(len(swapper.calls))
        assert seen["turned_face"] >= 4
        assert turned.n > 12, "the landmark model must have run after the turn"
        assert sum(swapped[6:12]) == 0, f"a turned head was swapped: {swapped}"
        assert all(n == 1 for n in swapped[-6:]), f"the persona did not come back: {swapped}"
    finally:
        masker.close()


class _PointsSwapper:
    """The real swapper, keeping the points each swap was asked to draw and the live ones."""

    def __init__(self, masker_ref: list) -> None:
        from pipeline.swap import MeshSwapper

        self.inner, self.masker_ref, self.moved = MeshSwapper(), masker_ref, []

    def swap(self, region, points, persona) -> None:
        track = self.masker_ref[0].tracker.tracks[0]
        live = track.landmarks[:, :2]
        drawn = np.asarray(points)[:, :2]
        # the points arrive in region px: undo the region's origin through the face oval,
        # which persona_shape never moves (weight 0 there)
        from pipeline.persona import face_mesh_topology

        oval = face_mesh_topology().face_oval
        shift = (live[oval] - drawn[oval]).mean(axis=0)
        self.moved.append(float(np.abs(drawn + shift - live).max() / max(np.ptp(live[:, 0]), 1.0)))
        self.inner.swap(region, points, persona)


@pytest.mark.parametrize("shape", [0.0, 1.0])
def test_persona_shape_sets_how_far_the_features_move(backend, face_frames, shape):
    ref: list = []
    swapper = _PointsSwapper(ref)
    masker = FaceMasker(_config(persona_shape=shape), mode="anonymize", backend=backend, swapper=swapper, seed=7)
    ref.append(masker)
    try:
        for f in face_frames[:4]:
            masker.process(f)
        assert swapper.moved, "the face should have been swapped"
        if shape == 0.0:
            assert max(swapper.moved) < 1e-4, "persona_shape 0 must draw the creator's own geometry"
        else:
            assert min(swapper.moved) > 0.01, "persona_shape 1 must move the features to the persona's proportions"
    finally:
        masker.close()


@pytest.mark.parametrize(
    "key, value",
    [
        ("max_yaw_deg", 5.0), ("max_yaw_deg", 95.0), ("persona_shape", -0.1), ("persona_shape", 1.5),
        ("smoothing_min_cutoff", 0.0), ("smoothing_beta", -0.1), ("smoothing_position_beta", -1.0),
        ("smoothing_feature_beta", float("nan")), ("sculpted_anonymize_max_side", -1),
        ("sculpted_anonymize_min_share", -0.1), ("sculpted_anonymize_max_share", 1.5),
        ("sculpted_anonymize_min_share", 0.6),  # above the default max_share
        ("smallest_rendition", -1), ("near_miss_score", 0.6), ("edge_look_score", -0.1), ("edge_look_score", 0.6),
        ("small_face_grow", 1.1), ("small_face_grow", 1.6),  # under the default face_grow; over 1.5
    ],
)
def test_out_of_range_knobs_are_refused(backend, key, value):
    with pytest.raises(ValueError, match=key):
        FaceMasker(_config(**{key: value}), mode="anonymize", backend=backend)


def test_group_photo_largest_face_gets_the_persona_others_anonymized(backend):
    root = have_shared_eval()
    if root is None:
        pytest.skip("../shared/eval is absent")
    from pipeline.procedural import builtin_persona

    rgb = cv2.cvtColor(cv2.imread(str(root / "images" / "insightface" / "t1.jpg")), cv2.COLOR_BGR2RGB)
    rgb = np.ascontiguousarray(rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2])
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    boxes = [d.box for d in YuNetDetector(detect_width=4096).detect(rgb)]
    assert len(boxes) == 6
    swapper = _RecordingSwapper()
    persona = builtin_persona("builtin-anime")
    masker = FaceMasker(_config(), mode="persona", persona=persona, backend=backend, swapper=swapper, seed=3)
    try:
        out = masker.process(frame)  # new faces are covered while their personas are painted
        for box in boxes:
            assert_face_masked(frame, out, box, "group photo, first frame")
        for _ in range(20):
            time.sleep(0.05)
            swapper.calls.clear()
            out = masker.process(frame)
            for box in boxes:
                assert_face_masked(frame, out, box, "group photo")
            if len(swapper.calls) == 5:
                break
        # one of the six (top middle) looks 44 degrees to the side: covered, not swapped
        assert masker.events["turned_face"] >= 1
        faces = swapper.calls
        assert len(faces) == 5
        largest = max(faces, key=lambda c: c[2])
        assert largest[0] == "builtin-anime"
        others = [c for c in faces if c is not largest]
        assert all(c[1] == "ephemeral" for c in others)
        assert len({c[0] for c in others}) == 4, "every other face is a different nobody"
    finally:
        masker.close()


def _at_time_of(new: av.VideoFrame, frame: av.VideoFrame) -> av.VideoFrame:
    new.pts, new.time_base = frame.pts, frame.time_base
    return new


def _half(frame: av.VideoFrame) -> av.VideoFrame:
    return _at_time_of(frame.reformat(width=frame.width // 2, height=frame.height // 2, format="yuv420p"), frame)


def _first_sculpted_painted(masker: FaceMasker) -> None:
    """Wait for the first slot's sculpted face (painted at the masker's start, or on the
    painter thread from its start when only the small-stream rule is on)."""
    future = masker._painting.get((0, True))  # noqa: SLF001
    if future is not None:
        future.result(timeout=30)  # a publisher's first frame takes longer
    else:
        assert (0, True) in masker._personas  # noqa: SLF001


def test_anonymized_faces_follow_the_stream_size(backend, face_frames, face_boxes):
    """At 640x360 the throwaway faces are sculpted, above it flat (sculpted_anonymize_max_side;
    the large-face rule off here, the next test has it); a size change mid-stream repaints
    them, the face covered meanwhile, and never shows it."""
    swapper = _RecordingSwapper()
    masker = FaceMasker(_config(sculpted_anonymize_min_share=0), mode="anonymize", backend=backend, swapper=swapper, seed=7)
    try:
        _run(masker, face_frames[:4], face_boxes[:4], "720p")
        assert swapper.calls and all(not c[0].startswith("ephemeral-sculpted-") for c in swapper.calls)
        swapper.calls.clear()
        small = [_half(f) for f in face_frames[4:]]
        for i in range(200):  # until the repaint is done (the last frame again if need be), up to 10 s
            f, box = small[min(i, len(small) - 1)], face_boxes[4 + min(i, len(small) - 1)]
            out = masker.process(f)
            assert (out.width, out.height) == (f.width, f.height)
            assert_face_masked(f, out, box / 2, f"360p after 720p, frame {i}")
            if swapper.calls:
                break
            time.sleep(0.05)  # the repaint runs on the painter thread
        assert swapper.calls and all(c[0].startswith("ephemeral-sculpted-") for c in swapper.calls)
    finally:
        masker.close()

    swapper = _RecordingSwapper()
    masker = FaceMasker(_config(), mode="anonymize", backend=backend, swapper=swapper, seed=7)
    try:  # a stream that starts small: its first face's sculpted persona is painted from the start
        _first_sculpted_painted(masker)
        _run(masker, [_half(f) for f in face_frames[:4]], [b / 2 for b in face_boxes[:4]], "360p")
        assert masker.events["persona_pending"] == 0
        assert swapper.calls and all(c[0].startswith("ephemeral-sculpted-") for c in swapper.calls)
        assert all(low for _, low in masker._personas), "the flat faces are dropped"  # noqa: SLF001
    finally:
        masker.close()

    x0, _, x1, _ = face_boxes[0]  # a portrait stream, 360 px wide and 640 tall, is small too
    left = int(min(max((x0 + x1) / 2 - 180, 0), face_frames[0].width - 360)) // 2 * 2
    portrait = [
        _at_time_of(av.VideoFrame.from_ndarray(np.ascontiguousarray(f.to_ndarray(format="rgb24")[:640, left:left + 360]),
                                               format="rgb24").reformat(format="yuv420p"), f)
        for f in face_frames[:4]
    ]
    swapper = _RecordingSwapper()
    masker = FaceMasker(_config(), mode="anonymize", backend=backend, swapper=swapper, seed=7)
    try:
        _first_sculpted_painted(masker)
        shifted = [b - np.array([left, 0, left, 0]) for b in face_boxes[:4]]
        _run(masker, portrait, shifted, "portrait 360x640")
        assert swapper.calls and all(c[0].startswith("ephemeral-sculpted-") for c in swapper.calls)
    finally:
        masker.close()

    swapper = _RecordingSwapper()
    masker = FaceMasker(_config(sculpted_anonymize_max_side=0, sculpted_anonymize_min_share=0), mode="anonymize",
                        backend=backend, swapper=swapper, seed=7)
    try:
        _run(masker, [_half(f) for f in face_frames[:4]], [b / 2 for b in face_boxes[:4]], "360p, rules off")
        assert swapper.calls and all(not c[0].startswith("ephemeral-sculpted-") for c in swapper.calls)
    finally:
        masker.close()


def _shrunk_on_canvas(frame: av.VideoFrame, factor: int = 3) -> av.VideoFrame:
    """The frame scaled down ``factor`` times, centred on a grey canvas of its own size: the
    same face as small in the frame as a crowd's."""
    rgb = frame.to_ndarray(format="rgb24")
    h, w = rgb.shape[:2]
    canvas = np.full_like(rgb, 128)
    small = cv2.resize(rgb, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    canvas[y:y + small.shape[0], x:x + small.shape[1]] = small
    return _at_time_of(av.VideoFrame.from_ndarray(canvas, format="rgb24").reformat(format="yuv420p"), frame)


def _shrunk_box(box: np.ndarray, frame: av.VideoFrame, factor: int = 3) -> np.ndarray:
    y, x = (frame.height - frame.height // factor) // 2, (frame.width - frame.width // factor) // 2
    return box / factor + np.array([x, y, x, y], np.float32)


def _styles(swapper: "_RecordingSwapper") -> set[str]:
    """The throwaway styles the swapper was asked to draw: 'sculpted' or 'flat'."""
    assert swapper.calls and all(c[1] == "ephemeral" for c in swapper.calls)
    return {"sculpted" if c[0].startswith("ephemeral-sculpted-") else "flat" for c in swapper.calls}


def test_in_a_large_stream_a_talking_head_is_sculpted_a_crowd_face_and_a_close_up_flat(backend, face_frames, face_boxes):
    """At 1280x720 the talking face (0.39 of the shorter side) wears a sculpted throwaway face:
    it is about 140 px in a platform's 360p rendition, where a flat one leaks
    (docs/benchmarks.md). The same face a third of that size, a crowd's, stays flat, and so
    does lp_d3's close-up (0.67 of its side)."""
    assert 0.2 < (face_boxes[0][3] - face_boxes[0][1]) / face_frames[0].height < 0.52
    swapper = _RecordingSwapper()
    masker = FaceMasker(_config(), mode="anonymize", backend=backend, swapper=swapper, seed=7)
    try:
        _first_sculpted_painted(masker)
        _run(masker, face_frames[:4], face_boxes[:4], "720p, a talking head")
        assert masker.events["persona_pending"] == 0
        assert _styles(swapper) == {"sculpted"}
    finally:
        masker.close()

    swapper = _RecordingSwapper()
    masker = FaceMasker(_config(), mode="anonymize", backend=backend, swapper=swapper, seed=7)
    try:
        frames = [_shrunk_on_canvas(f) for f in face_frames[:4]]
        _run(masker, frames, [_shrunk_box(b, f) for b, f in zip(face_boxes[:4], face_frames)], "720p, a crowd-sized face")
        assert _styles(swapper) == {"flat"}
    finally:
        masker.close()

    root = have_shared_eval()
    frames = list(iter_frames(root / "videos" / "lp_d3.mp4", 4))
    det = YuNetDetector(detect_width=4096)
    swapper = _RecordingSwapper()
    masker = FaceMasker(_config(sculpted_anonymize_max_side=0), mode="anonymize", backend=backend, swapper=swapper, seed=7)
    try:  # 512x512 would be a small stream; the stream-size rule is off to see the band's edge
        _run(masker, frames, [det.detect(f.to_ndarray(format="rgb24"))[0].box for f in frames], "a close-up")
        assert _styles(swapper) == {"flat"}
    finally:
        masker.close()


def test_a_face_near_an_edge_of_the_band_keeps_its_style(backend):
    """Hysteresis: a face is sculpted from sculpted_anonymize_min_share to _max_share of the
    shorter side and keeps that style until 0.8x under the lower edge or past the upper one
    divided by 0.8, so a creator leaning back and forth near an edge does not flip between
    two faces."""
    from types import SimpleNamespace

    def styles(masker: FaceMasker, sides: tuple[int, ...]) -> list[bool]:
        masker._follow_stream_size(720, 1280)  # noqa: SLF001
        return [masker._wears_sculpted(SimpleNamespace(id=1, size=float(s)), (720, 1280)) for s in sides]  # noqa: SLF001

    masker = FaceMasker(_config(sculpted_anonymize_min_share=0.2, sculpted_anonymize_max_share=0.5), mode="anonymize",
                        backend=backend, seed=7)
    try:  # lower edge 144 px (back to flat under 115.2), upper 360 px (back to flat from 450)
        assert styles(masker, (140, 144, 130, 116, 110, 140, 150, 359, 400, 449, 450, 400, 359)) == [
            False, True, True, True, False, False, True, True, True, True, False, False, True]
    finally:
        masker.close()
    off = FaceMasker(_config(sculpted_anonymize_min_share=0), mode="anonymize", backend=backend, seed=7)
    try:
        assert styles(off, (144, 250, 360)) == [False, False, False]
    finally:
        off.close()


def test_a_face_small_in_a_360p_rendition_is_covered_not_swapped(backend, face_frames, face_boxes):
    """A 720p stream's face of about 70 px is 35 px in a platform's 360p rendition: it is
    covered (``small_face``), not swapped, and the output shows no trace of the real face.
    With ``smallest_rendition: 0`` only the stream's own size counts and it is swapped."""
    frames = [_shrunk_on_canvas(f, 4) for f in face_frames[:4]]
    boxes = [_shrunk_box(b, f, 4) for b, f in zip(face_boxes[:4], face_frames)]
    side = float(np.max(boxes[0][2:] - boxes[0][:2]))
    assert 40 < side < 80, side
    for rendition, covered in ((360, True), (0, False)):
        swapper = _RecordingSwapper()
        masker = FaceMasker(_config(smallest_rendition=rendition), mode="anonymize", backend=backend, swapper=swapper, seed=7)
        try:
            _first_sculpted_painted(masker)
            _run(masker, frames, boxes, f"a 70 px face, smallest_rendition {rendition}")
            assert (masker.events["small_face"] >= 3) == covered, masker.events
            assert bool(swapper.calls) != covered
        finally:
            masker.close()


def test_the_size_line_follows_the_smallest_rendition_and_fails_closed(backend):
    """The line is min_face_px in the smallest rendition (120 px in 1080p, 40 px in a stream
    no larger than 360p); a face covered for its size is swapped again only at 1/0.8 of it,
    so a face hovering at the line does not flicker between a cover and a face."""
    from types import SimpleNamespace

    def small(masker: FaceMasker, hw: tuple[int, int], sides: tuple[int, ...]) -> list[bool]:
        return [masker._too_small(SimpleNamespace(id=1, size=float(s)), hw) for s in sides]  # noqa: SLF001

    masker = FaceMasker(_config(), mode="anonymize", backend=backend, seed=7)
    try:  # 1080p: covered under 120 px, swapped again from 150
        assert small(masker, (1080, 1920), (130, 119, 130, 149, 150, 121)) == [False, True, True, True, False, False]
    finally:
        masker.close()
    for rendition, hw in ((360, (360, 640)), (360, (240, 426)), (0, (1080, 1920))):
        masker = FaceMasker(_config(smallest_rendition=rendition), mode="anonymize", backend=backend, seed=7)
        try:  # the stream's own min_face_px: 40 px (back at 50)
            assert small(masker, hw, (41, 39, 45, 50, 41)) == [False, True, True, False, False]
        finally:
            masker.close()
    masker = FaceMasker(_config(), mode="anonymize", backend=backend, seed=7)
    try:  # a portrait 480x908 stream's 360p is 190x360: its line is 40 * 908 / 360 = 101 px, not 53
        assert small(masker, (908, 480), (102, 100, 60)) == [False, True, True]
    finally:
        masker.close()


def test_a_rendition_is_the_stream_fitted_into_a_16_9_box_of_its_height():
    """Landscape streams shrink by their height, portrait ones too (as height-named renditions
    show them), ultra-wide ones by the box's width; a rendition never enlarges a stream."""
    from pipeline.masker import rendition_scale

    assert rendition_scale((1080, 1920), 360) == pytest.approx(1 / 3)
    assert rendition_scale((720, 1280), 160) == pytest.approx(160 / 720)
    assert rendition_scale((908, 480), 360) == pytest.approx(360 / 908)
    assert rendition_scale((720, 2560), 360) == pytest.approx(640 / 2560)
    assert rendition_scale((240, 426), 360) == 1.0
    assert rendition_scale((1080, 1920), 0) == 1.0


def test_a_live_face_switch_carries_the_faces_over(backend, face_frames, face_boxes):
    """The masker that replaces another mid-stream (PATCH mode/persona) follows the faces the
    old one tracked from its first frame: with a detector that never finds the face and no
    segmenter, a fresh masker shows it; one that took over keeps it masked."""
    blind = _Wrap(backend.detector, lambda f, *a: [])
    old, _ = _masker(backend, "anonymize")
    new, seen = _masker(backend, "blur", detector=blind, segmenter=None)
    fresh, _ = _masker(backend, "blur", detector=_Wrap(backend.detector, lambda f, *a: []), segmenter=None)
    try:
        _run(old, face_frames[:12], face_boxes[:12], "before the switch")
        ids = [t.id for t in old.tracker.tracks]
        assert ids
        assert new.take_over(old)
        old.close()
        _run(new, face_frames[12:], face_boxes[12:], "after the switch")
        assert [t.id for t in new.tracker.tracks] == ids and not seen  # followed, never lost
        assert not new.take_over(old), "only before the first frame"
        out = fresh.process(face_frames[12])
        assert face_detail_correlation(face_frames[12], out, face_boxes[12]) > 0.9, "the control: a fresh start without help shows it"
    finally:
        for m in (old, new, fresh):
            m.close()


def test_a_switch_away_from_a_masker_still_running_a_late_frame_starts_afresh(backend, face_frames, face_boxes):
    release = threading.Event()
    stalled = _Wrap(backend.segmenter, lambda f, *a: (release.wait(2.0), f(*a))[1], calls={3})
    old, _ = _masker(backend, "anonymize", segmenter=stalled, deadline_ms=100, segment_every=1)
    new, _ = _masker(backend, "pixelate")
    try:
        for f in face_frames[:4]:
            old.process(f)  # the fourth misses its deadline and is still running
        assert not new.take_over(old)  # that late frame owns the old state
        assert not new.take_over(IdentityProcessor())
        _run(new, face_frames[4:10], face_boxes[4:10], "a fresh start")
    finally:
        release.set()
        old.close()
        new.close()


def _half_face_frame() -> tuple[av.VideoFrame, np.ndarray]:
    """The first frame of bench/synth_clips.py's group_selfie_many_people (no bars): a man
    in the bottom-right corner whose face the frame's bottom edge cuts, and his box from an
    independent full-resolution pass."""
    root = have_shared_eval()
    if root is None:
        pytest.skip("../shared/eval is absent: the edge look is tested on a real half face")
    from bench import eval_lib
    from bench.synth_clips import group_frame

    rgb = group_frame(eval_lib.read_rgb(root / "images" / "deepface" / "selfie-many-people.jpg"), 0, (), np.random.default_rng(0))
    reference = YuNetDetector(detect_width=4096)
    cut = [d.box for d in reference.detect(rgb) if d.box[0] > 800 and d.box[3] >= rgb.shape[0] - 2]
    assert len(cut) == 1, "the reference detector must see the half face at the frame's bottom edge"
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p"), cut[0]


@pytest.mark.parametrize("edge_look_score", [0.1, 0.0])
def test_a_face_the_frame_edge_cuts_is_looked_at_closer(backend, edge_look_score):
    """The detector sees 720p at 640 px wide and scores the half face far under its line
    there (0.11-0.46 in docs/benchmarks.md), and the person rule does not cover it (the group is
    one person blob whose head holds other faces). pipeline.edge_look_score: a candidate that
    runs out of the frame is looked at again at once, twice as fine, and found there. Off, the
    half face is raw: the check can fail."""
    frame, box = _half_face_frame()
    h, w = frame.height, frame.width
    small = np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
    small = cv2.resize(small, backend.detector.input_size(h, w), interpolation=cv2.INTER_AREA)
    own = [d for d in backend.detector.detect(small, (h, w), 0.05) if inside_share(d.box, box) > 0.5 or inside_share(box, d.box) > 0.5]
    assert own and max(d.score for d in own) < 0.5, "at the detector's own scale the half face is under its line"
    masker, _ = _masker(backend, edge_look_score=edge_look_score)
    try:
        out = masker.process(frame)
        if edge_look_score:
            assert any(inside_share(t.box, box) > 0.5 for t in masker.tracker.tracks), "the closer look found the half face"
            assert_face_masked(frame, out, box, "the half face")
        else:
            assert face_detail_correlation(frame, out, box) >= 0.3, "without the closer look the half face is raw"
    finally:
        masker.close()


def test_a_closer_look_keeps_only_faces_clearly_over_the_line(backend) -> None:
    """A face only the closer look finds must score EDGE_LOOK_MARGIN over the detector's line
    (lp_s18's blurred background scored 0.51 there once): the half face (0.8 or more, twice as
    fine) is kept under a line of 0.5 and dropped under one it does not clear by the margin."""
    frame, box = _half_face_frame()
    hw = (frame.height, frame.width)
    img = FullRgb(frame.to_ndarray(format="rgb24"))
    masker, _ = _masker(backend)
    try:
        found = masker._look_closer(img, [box], [], hw, 0.5)
        assert len(found) == 1 and inside_share(found[0].box, box) > 0.5
        dropped = masker._look_closer(img, [box], [], hw, found[0].score - EDGE_LOOK_MARGIN / 2)
        assert dropped == [], "a find under line + margin is not a face"
    finally:
        masker.close()


def test_edge_candidates_are_under_the_line_cut_by_the_frame_and_new() -> None:
    """Which candidates get the closer look: from the floor up to the line, whose box reaches
    the frame's edge, and that are not a face already found, tracked or held."""
    hw = (720, 1280)
    kp = np.zeros((5, 2), np.float32)

    def cand(box, score):
        return FaceDetection(np.array(box, np.float32), score, kp)

    bottom = cand([850, 330, 1050, 720], 0.13)
    left = cand([0, 200, 90, 330], 0.3)
    inside = cand([500, 200, 600, 330], 0.3)  # not cut by the frame
    weak = cand([1200, 10, 1280, 120], 0.05)  # under the floor
    strong = cand([0, 500, 120, 640], 0.8)  # a face: the detector's own
    known = cand([1180, 0, 1280, 110], 0.2)  # a tracked face's own weak detection
    picked = FaceMasker._edge_candidates(
        [bottom, left, inside, weak, strong, known], 0.5, 0.1, [np.array([1175, 0, 1280, 115], np.float32)], hw
    )
    assert [b.tolist() for b in picked] == [bottom.box.tolist(), left.box.tolist()]
