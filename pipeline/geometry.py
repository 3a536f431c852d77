"""Identity-neutral face geometry: the persona keeps its own proportions, the creator's
expressions still drive it.

Warping a persona straight onto the live landmarks copies the creator's facial geometry
(eye spacing, nose length, mouth width) into the output, and a face recognizer reads
identity from geometry (in a development check on Obama_speaking, the swapped face scored
far closer to the original than a flat fill of the same oval did). So each face's *neutral* shape
is learnt as a slow running mean (in a pose-normalised frame) and the persona is driven
by the live shape's deviation from it: out = live + alpha * w * (persona - neutral),
mapped back into the frame. ``w`` is 0 on the face oval (the swapped region still covers
exactly the live face) and rises to 1 inside, so only the inner features move. ``alpha``
is ``pipeline.persona_shape``: at 0.85 one throwaway persona on lp_s32 still matched her
in 10 of 90 frames; at 1.0 (the default) none did (docs/benchmarks.md).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pipeline.persona import canonical_layout, face_mesh_topology
from pipeline.tracking import LEFT_EYE_OUTER, RIGHT_EYE_OUTER


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares scale s, rotation R (2x2), translation t with dst ~ s * src @ R.T + t (Umeyama)."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    fix = np.diag([1.0, d])
    r = u @ fix @ vt
    var = (a * a).sum() / len(src)
    s = float((sig * np.diag(fix)).sum() / var) if var > 0 else 1.0
    return s, r, mu_d - s * mu_s @ r.T


def yaw_degrees(points: np.ndarray) -> float:
    """How far the head is turned left or right, from the 3D face mesh (468x3, z in the same
    units as x and y): the angle of the line between the outer eye corners out of the image
    plane. 0 faces the camera; the sign says which way. Roll does not change it."""
    d = np.asarray(points[LEFT_EYE_OUTER, :3], np.float64) - np.asarray(points[RIGHT_EYE_OUTER, :3], np.float64)
    return float(np.degrees(np.arctan2(d[2], np.hypot(d[0], d[1]))))


@lru_cache(maxsize=1)
def inner_weights(ramp: float = 0.15) -> np.ndarray:
    """Per-landmark weight: 0 on the face oval, rising to 1 at ``ramp`` face widths inside."""
    layout = canonical_layout(512).astype(np.float64)
    oval = layout[face_mesh_topology().face_oval]
    width = float(np.ptp(layout[:, 0]))
    dist = np.sqrt(((layout[:, None, :] - oval[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    return np.clip(dist / (ramp * width), 0.0, 1.0).astype(np.float32)


class NeutralShape:
    """One tracked face's neutral shape, learnt over time, and the persona-driven target points."""

    def __init__(self, time_constant_s: float = 3.0, alpha: float = 1.0) -> None:
        self.time_constant_s = time_constant_s
        self.alpha = alpha
        self._neutral: np.ndarray | None = None
        self._t: float | None = None

    def target(self, live: np.ndarray, persona_points: np.ndarray, now: float) -> np.ndarray:
        """Points (468x2, frame px) to warp the persona onto."""
        live2 = live[:, :2].astype(np.float64)
        ref = persona_points[:, :2].astype(np.float64)
        s, r, t = similarity(live2, ref)  # live frame -> persona frame
        live_n = s * live2 @ r.T + t
        if self._neutral is None or self._t is None:
            self._neutral = live_n
        else:
            dt = max(0.0, now - self._t)
            k = 1.0 - np.exp(-dt / self.time_constant_s) if dt > 0 else 0.0
            self._neutral = self._neutral + k * (live_n - self._neutral)
        self._t = now
        offset_n = (ref - self._neutral) * (self.alpha * inner_weights())[:, None]
        offset = (offset_n @ r) / s  # back to frame pixels (R is orthonormal: inverse = R.T)
        return (live2 + offset).astype(np.float32)
