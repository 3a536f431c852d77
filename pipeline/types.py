"""Values passed between the masking stages.

Conventions, everywhere in ``pipeline/``: images are numpy ``uint8`` HxWx3 **RGB**; points
are float32 ``(x, y)`` in pixels of the image they were measured on, x right, y down.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# YuNet's keypoint order (the subject's right eye appears on the image's left).
KP_RIGHT_EYE, KP_LEFT_EYE, KP_NOSE, KP_RIGHT_MOUTH, KP_LEFT_MOUTH = range(5)


@dataclass(frozen=True)
class FaceDetection:
    """One detector hit: box (x0, y0, x1, y1), confidence, 5 keypoints (5x2)."""

    box: np.ndarray
    score: float
    keypoints: np.ndarray

    def scaled(self, sx: float, sy: float) -> FaceDetection:
        s = np.array([sx, sy, sx, sy], np.float32)
        return FaceDetection(self.box * s, self.score, self.keypoints * np.array([sx, sy], np.float32))

    @property
    def size(self) -> float:
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


@dataclass(frozen=True)
class FaceLandmarks:
    """468 face-mesh points (468x3: x, y in image px, z relative depth) and presence score."""

    points: np.ndarray
    presence: float

    @property
    def xy(self) -> np.ndarray:
        return self.points[:, :2]

    def box(self) -> np.ndarray:
        xy = self.xy
        return np.array([*xy.min(axis=0), *xy.max(axis=0)], np.float32)


@dataclass(frozen=True)
class CropRoi:
    """A rotated square crop: centre (x, y), side in px, rotation in radians (image -> upright)."""

    cx: float
    cy: float
    size: float
    rotation: float = 0.0


@dataclass
class PersonMask:
    """Person probability (float32 hxw in [0, 1]) at the segmenter's resolution, for a frame of frame_hw."""

    prob: np.ndarray
    frame_hw: tuple[int, int]
    extra: dict = field(default_factory=dict)
