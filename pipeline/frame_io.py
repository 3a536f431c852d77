"""The masker's view of a frame: yuv420p planes as numpy arrays, RGB only where it is needed.

Why: converting a whole 1280x720 frame to RGB, and copying it back into a new frame,
cost the masker more than a millisecond per frame, while the models need RGB only around
the faces (the landmark crops, the swap and cover regions) and, for the detector and the
segmenter, the whole frame at a fraction of its size, which is made from the planes
directly. ``LazyRgb`` converts 32 px tiles on first use and never twice, so a region one
stage has already changed (a swapped face) is never overwritten with the raw frame by
another stage that reads an overlapping region.

Frames that are not yuv420p with even sides go through ``FullRgb``: the same interface
over a whole-frame conversion.
"""

from __future__ import annotations

import math

import av
import cv2
import numpy as np

from pipeline.cover import i420_planes

TILE = 32  # px, even: tiles are converted whole


def plane_views(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U and V of a yuv420p frame as numpy views of its buffers (line padding cut off)."""
    h, w = frame.height, frame.width
    views = []
    for plane, (ph, pw) in zip(frame.planes, ((h, w), (h // 2, w // 2), (h // 2, w // 2))):
        buf = np.frombuffer(plane, np.uint8)
        views.append(buf[: ph * plane.line_size].reshape(ph, plane.line_size)[:, :pw])
    return views[0], views[1], views[2]


def copy_frame(frame: av.VideoFrame) -> tuple[av.VideoFrame, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A new yuv420p frame with the same pixels, and writable views of its planes."""
    out = av.VideoFrame(frame.width, frame.height, "yuv420p")
    planes = plane_views(out)
    for dst, src in zip(planes, plane_views(frame)):
        np.copyto(dst, src)
    return out, planes


def i420_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """RGB of planes (Y even-sized, U and V half its size), BT.601 limited range as OpenCV reads I420."""
    h, w = y.shape
    packed = np.empty((h * 3 // 2, w), np.uint8)
    for dst, src in zip(i420_planes(packed, h, w), (y, u, v)):
        dst[:] = src
    return cv2.cvtColor(packed, cv2.COLOR_YUV2RGB_I420)


def write_rgb_planes(planes: tuple[np.ndarray, np.ndarray, np.ndarray], x0: int, y0: int, rgb: np.ndarray) -> None:
    """Write an RGB patch (even origin and size) into Y, U, V planes in place."""
    h, w = rgb.shape[:2]
    if h < 2 or w < 2:
        return
    packed = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420)
    (fy, fu, fv), (py, pu, pv) = planes, i420_planes(packed, h, w)
    fy[y0 : y0 + h, x0 : x0 + w] = py
    fu[y0 // 2 : (y0 + h) // 2, x0 // 2 : (x0 + w) // 2] = pu
    fv[y0 // 2 : (y0 + h) // 2, x0 // 2 : (x0 + w) // 2] = pv


def chroma_matrix(m: np.ndarray) -> np.ndarray:
    """The 2x3 affine ``m`` (full-resolution pixels -> crop pixels) for the half-resolution
    chroma planes of both: a chroma sample c sits at full-resolution 2c + 0.5."""
    a, t = m[:, :2], m[:, 2]
    return np.concatenate([a, ((a @ np.array([0.5, 0.5]) + t - 0.5) / 2.0)[:, None]], axis=1)


class LazyRgb:
    """RGB of a yuv420p frame, converted tile by tile as stages ask for regions of it.

    ``rgb`` is the whole frame's buffer; only regions passed to ``ensure`` hold pixels (the
    rest is whatever the reused buffer held before). Stages may modify what they ensured.
    """

    def __init__(self, planes: tuple[np.ndarray, np.ndarray, np.ndarray], buffer: np.ndarray | None = None) -> None:
        self.planes = planes
        h, w = planes[0].shape
        if h % 2 or w % 2:
            raise ValueError(f"LazyRgb needs even frame sides, got {w}x{h}")
        self.height, self.width = h, w
        self.rgb = buffer if buffer is not None and buffer.shape == (h, w, 3) else np.empty((h, w, 3), np.uint8)
        self._done = np.zeros((-(-h // TILE), -(-w // TILE)), bool)

    def ensure(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Make the region (frame px, clipped to the frame) valid RGB; returns the whole buffer."""
        tx0, ty0 = max(0, int(x0) // TILE), max(0, int(y0) // TILE)
        tx1 = min(self._done.shape[1], -(-int(math.ceil(x1)) // TILE))
        ty1 = min(self._done.shape[0], -(-int(math.ceil(y1)) // TILE))
        if tx1 <= tx0 or ty1 <= ty0:
            return self.rgb
        todo = ~self._done[ty0:ty1, tx0:tx1]
        if not todo.any():
            return self.rgb
        # One conversion per band of tile rows that need the same columns, per run of
        # columns (usually the whole region is new: one conversion).
        r = 0
        while r < todo.shape[0]:
            end = r + 1
            while end < todo.shape[0] and np.array_equal(todo[end], todo[r]):
                end += 1
            edges = np.flatnonzero(np.diff(np.concatenate([[0], todo[r].view(np.int8), [0]])))
            for a, b in zip(edges[::2], edges[1::2]):
                self._convert((tx0 + a) * TILE, (ty0 + r) * TILE, (tx0 + b) * TILE, (ty0 + end) * TILE)
            r = end
        self._done[ty0:ty1, tx0:tx1] = True
        return self.rgb

    def warp(self, m: np.ndarray, size: int) -> np.ndarray:
        """RGB crop size x size through the 2x3 affine ``m`` (frame px -> crop px), warped
        plane by plane (Y at size, U and V at size / 2), black outside the frame: a face
        crop costs its own pixels, not the conversion of the frame region it covers."""
        y, u, v = self.planes
        flags, border = cv2.INTER_LINEAR, cv2.BORDER_CONSTANT
        half = (size // 2, size // 2)
        mc = chroma_matrix(m)
        ys = cv2.warpAffine(y, m, (size, size), flags=flags, borderMode=border, borderValue=16)
        us = cv2.warpAffine(u, mc, half, flags=flags, borderMode=border, borderValue=128)
        vs = cv2.warpAffine(v, mc, half, flags=flags, borderMode=border, borderValue=128)
        return i420_to_rgb(ys, us, vs)

    def _convert(self, x0: int, y0: int, x1: int, y1: int) -> None:
        x1, y1 = min(self.width, x1), min(self.height, y1)
        y, u, v = self.planes
        cu, cv = u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
        self.rgb[y0:y1, x0:x1] = i420_to_rgb(y[y0:y1, x0:x1], cu, cv)

    def luma(self, width: int, height: int) -> np.ndarray:
        """The frame's luma at width x height, for change checks (``guard.picture_changed``
        averages it over blocks): linear, 0.05 ms at 1280x720 -> 256x144 where area costs 0.6."""
        return cv2.resize(self.planes[0], (width, height), interpolation=cv2.INTER_LINEAR)

    def scaled(self, width: int, height: int, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
        """The whole frame as RGB at width x height (even), made from the planes, not from ``rgb``."""
        y, u, v = self.planes
        if (width, height) == (self.width, self.height):
            return self.ensure(0, 0, width, height).copy()
        ys = cv2.resize(y, (width, height), interpolation=interpolation)
        us = cv2.resize(u, (width // 2, height // 2), interpolation=interpolation)
        vs = cv2.resize(v, (width // 2, height // 2), interpolation=interpolation)
        return i420_to_rgb(ys, us, vs)


class FullRgb:
    """``LazyRgb``'s interface over a frame converted whole (any pixel format, any size)."""

    def __init__(self, rgb: np.ndarray) -> None:
        self.rgb = rgb
        self.height, self.width = rgb.shape[:2]

    def ensure(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return self.rgb

    def luma(self, width: int, height: int) -> np.ndarray:
        small = cv2.resize(self.rgb, (width, height), interpolation=cv2.INTER_LINEAR)
        return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)

    def warp(self, m: np.ndarray, size: int) -> np.ndarray:
        return cv2.warpAffine(self.rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    def scaled(self, width: int, height: int, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
        if (width, height) == (self.width, self.height):
            return self.rgb.copy()
        return cv2.resize(self.rgb, (width, height), interpolation=interpolation)
