"""Face tracking between detector runs: crops from landmarks, One Euro smoothing, track identity.

The detector runs every few frames; in between, each face's crop for the landmark model
comes from its previous landmarks (as in MediaPipe's face mesh graph). A face whose
landmarks lose presence becomes *held*: the privacy guard keeps covering its last box.
Pure logic: no models, no clocks (times are passed in).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.types import KP_LEFT_EYE, KP_RIGHT_EYE, CropRoi, FaceDetection, FaceLandmarks

ROI_SCALE = 1.5  # MediaPipe's RectTransformation for the face-mesh crop (square_long)
POSITION_BETA = 1.0  # One Euro beta of the face's position (its points' centroid), see LandmarkSmoother
FEATURE_BETA = 0.5  # ... and of the eyelids and lips about it (blinks, speech), where the rest get ``beta``
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263  # landmark ids MediaPipe uses for the crop's rotation
MIN_PRESENCE = 0.5


def roi_from_detection(det: FaceDetection, scale: float = ROI_SCALE) -> CropRoi:
    x0, y0, x1, y1 = (float(v) for v in det.box)
    right, left = det.keypoints[KP_RIGHT_EYE], det.keypoints[KP_LEFT_EYE]
    rotation = math.atan2(float(left[1] - right[1]), float(left[0] - right[0]))
    return CropRoi((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * scale, rotation)


def roi_from_landmarks(points: np.ndarray, scale: float = ROI_SCALE) -> CropRoi:
    """The next frame's crop: the landmarks' box in the face's own upright frame, scaled."""
    xy = points[:, :2].astype(np.float64)
    d = xy[LEFT_EYE_OUTER] - xy[RIGHT_EYE_OUTER]
    rotation = math.atan2(d[1], d[0])
    c, s = math.cos(rotation), math.sin(rotation)
    upright = xy @ np.array([[c, -s], [s, c]])  # rotate by -rotation
    lo, hi = upright.min(axis=0), upright.max(axis=0)
    centre_u = (lo + hi) / 2
    centre = np.array([[c, -s], [s, c]]) @ centre_u  # back to image coordinates
    return CropRoi(float(centre[0]), float(centre[1]), float((hi - lo).max() * scale), rotation)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def inside_share(box: np.ndarray, outer: np.ndarray) -> float:
    """The share of ``box``'s area that lies inside ``outer``."""
    ix = max(0.0, min(box[2], outer[2]) - max(box[0], outer[0]))
    iy = max(0.0, min(box[3], outer[3]) - max(box[1], outer[1]))
    return float(ix * iy / max(1e-6, (box[2] - box[0]) * (box[3] - box[1])))


def grow_box(box: np.ndarray, margin: float, hw: tuple[int, int] | None = None) -> np.ndarray:
    """The box grown by ``margin`` of its size on every side (clipped to the frame if given)."""
    w, h = box[2] - box[0], box[3] - box[1]
    out = np.array([box[0] - w * margin, box[1] - h * margin, box[2] + w * margin, box[3] + h * margin], np.float32)
    if hw is not None:
        out = np.clip(out, 0, [hw[1], hw[0], hw[1], hw[0]]).astype(np.float32)
    return out


class OneEuroFilter:
    """One Euro filter (Casiez et al. 2012) over an array of coordinates.

    Speeds are measured in face sizes per second, so the same parameters suit a face of
    60 px and one of 600 px: slow drift is smoothed hard (jitter gone), fast motion barely.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float | np.ndarray = 0.05, d_cutoff: float = 1.0) -> None:
        self.min_cutoff = min_cutoff
        self.beta = beta  # an array: one beta per row of the filtered array (per point)
        self.d_cutoff = d_cutoff
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        if self._x is None or self._t is None or t <= self._t:
            self._x, self._dx, self._t = x.astype(np.float64), np.zeros_like(x, np.float64), t
            return x.copy()
        dt = t - self._t
        dx = (x - self._x) / dt / max(scale, 1e-6)
        self._dx = self._dx + self._alpha(self.d_cutoff, dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * 100.0 * np.abs(self._dx)
        self._x = self._x + self._alpha(cutoff, dt) * (x - self._x)
        self._t = t
        return self._x.astype(x.dtype)


class LandmarkSmoother:
    """One Euro smoothing of a face's landmarks, split into the face's position and its shape.

    A moving head moves all 468 points together; their noise is each point's own. The
    points' centroid is therefore almost free of noise (1/sqrt(468) of a point's), and it
    is followed closely (``position_beta``): a swaying head is not trailed by its persona,
    which both costs expression error and lets the real face's edge lead the mask. The
    points about the centroid (expression, turning, scale) keep the per-point filter
    (``beta``), which smooths a still face's jitter hard, except ``features`` (indices: the
    eyelids and lips), which get ``feature_beta``: a blink lasts three or four frames, and
    at ``beta`` the persona's eyes closed only two thirds of the way, a frame late. The
    landmark model's lids barely jitter on a still face (docs/benchmarks.md), so following
    them closely costs little.
    """

    def __init__(
        self,
        min_cutoff: float = 1.0,
        beta: float = 0.05,
        position_beta: float = POSITION_BETA,
        features: np.ndarray | None = None,
        feature_beta: float = FEATURE_BETA,
    ) -> None:
        self.position = OneEuroFilter(min_cutoff, position_beta)
        self.shape = OneEuroFilter(min_cutoff, beta)
        self.beta, self.features, self.feature_beta = beta, features, feature_beta

    def __call__(self, points: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        if self.features is not None and np.ndim(self.shape.beta) == 0:
            betas = np.full((len(points), 1), self.beta)
            betas[self.features] = self.feature_beta
            self.shape.beta = betas  # per point, broadcast over the coordinates
        centre = points[:, :2].mean(axis=0)
        shape = points.copy()
        shape[:, :2] -= centre
        out = self.shape(shape, t, scale)
        out[:, :2] += self.position(centre, t, scale)
        return out


@dataclass
class Track:
    """One face followed across frames."""

    id: int
    roi: CropRoi
    box: np.ndarray  # last known face box (from landmarks, or the detection)
    slot: int  # persona slot: which of the session's personas this face wears
    filter: LandmarkSmoother
    landmarks: np.ndarray | None = None  # smoothed 468x3, frame px
    last_seen: float = 0.0
    age: int = 0  # frames with landmarks

    @property
    def size(self) -> float:
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


@dataclass
class HeldFace:
    """A face that was seen and then lost: covered at its last place until ``until``."""

    box: np.ndarray
    slot: int
    until: float
    reason: str


@dataclass
class FaceTracker:
    """Tracks, held (lost) faces, and persona slots. Driven by the masker once per frame."""

    min_cutoff: float = 1.0
    beta: float = 0.05
    hold_s: float = 1.0
    position_beta: float = POSITION_BETA
    features: np.ndarray | None = None  # landmark indices smoothed with feature_beta (LandmarkSmoother)
    feature_beta: float = FEATURE_BETA
    match_iou: float = 0.3
    tracks: list[Track] = field(default_factory=list)
    held: list[HeldFace] = field(default_factory=list)
    _next_id: int = 0

    def _free_slot(self, prefer: int | None = None) -> int:
        used = {t.slot for t in self.tracks}
        if prefer is not None and prefer not in used:
            return prefer
        slot = 0
        while slot in used:
            slot += 1
        return slot

    def needs_detection(self) -> bool:
        """Detect on every frame while nothing is tracked or a face is held."""
        return not self.tracks or bool(self.held)

    def apply_detections(self, detections: list[FaceDetection], now: float) -> None:
        """Start tracks for detections no track covers; refresh holds the detector still sees."""
        for det in detections:
            best = max((iou(det.box, t.box) for t in self.tracks), default=0.0)
            if best >= self.match_iou:
                continue
            slot = None
            for h in self.held:
                if iou(det.box, h.box) > 0.1:
                    slot = h.slot
            self.tracks.append(
                Track(
                    id=self._next_id,
                    roi=roi_from_detection(det),
                    box=det.box.copy(),
                    slot=self._free_slot(slot),
                    filter=LandmarkSmoother(
                        self.min_cutoff, self.beta, self.position_beta, self.features, self.feature_beta
                    ),
                    last_seen=now,
                )
            )
            self._next_id += 1

    def update(self, track: Track, lm: FaceLandmarks | None, now: float) -> bool:
        """Feed a track its new landmarks; a missing or absent face moves it to the held list."""
        if lm is None or lm.presence < MIN_PRESENCE or not np.isfinite(lm.points).all():
            self._lose(track, now, "lost" if track.age else "no_landmarks")
            return False
        raw_box = lm.box()
        scale = float(max(raw_box[2] - raw_box[0], raw_box[3] - raw_box[1], 1.0))
        smoothed = track.filter(lm.points, now, scale)
        track.landmarks = smoothed
        track.box = np.array([*smoothed[:, :2].min(axis=0), *smoothed[:, :2].max(axis=0)], np.float32)
        track.roi = roi_from_landmarks(lm.points)  # the raw points: smoothing lag must not steer the crop
        track.last_seen = now
        track.age += 1
        self.held = [h for h in self.held if iou(h.box, track.box) < 0.3]
        return True

    def _lose(self, track: Track, now: float, reason: str) -> None:
        if track in self.tracks:
            self.tracks.remove(track)
        for h in self.held:
            if iou(h.box, track.box) > 0.3:
                h.box, h.until = track.box.copy(), max(h.until, now + self.hold_s)
                return
        self.held.append(HeldFace(track.box.copy(), track.slot, now + self.hold_s, reason))

    def dedupe(self) -> None:
        """Two tracks that converged on one face: keep the older."""
        keep: list[Track] = []
        for t in sorted(self.tracks, key=lambda t: t.id):
            if all(iou(t.box, k.box) < 0.5 for k in keep):
                keep.append(t)
        self.tracks = keep

    def expire(self, now: float) -> None:
        self.held = [h for h in self.held if h.until > now]

    def refresh_holds(self, detections: list[FaceDetection], now: float) -> None:
        """A held face the detector still sees (but landmarks reject) stays held."""
        for h in self.held:
            for det in detections:
                if iou(det.box, h.box) > 0.3:
                    h.box = det.box.copy()
                    h.until = max(h.until, now + self.hold_s)
