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


def even_box(box: np.ndarray | tuple[float, ...], height: int, width: int) -> tuple[int, int, int, int] | None:
    """``box`` (x0, y0, x1, y1 frame px) grown to even edges and clipped to the frame, so it
    maps onto whole chroma pixels; None when less than 2 px is left."""
    x0, y0 = int(max(0, np.floor(box[0]))) & ~1, int(max(0, np.floor(box[1]))) & ~1
    x1, y1 = min(width, int(np.ceil(box[2]) + 1) & ~1), min(height, int(np.ceil(box[3]) + 1) & ~1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1, y1


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


def shrink(img: np.ndarray, width: int, height: int, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    """``cv2.resize`` to width x height. An area shrink is made of exact halvings, OpenCV's
    fast path (0.07 ms for a 1280x720 plane, where one 2.05x area shrink to 640x352 costs
    2.4 ms), then a linear step for what is left (under 2x, so no pixel is skipped)."""
    if interpolation == cv2.INTER_AREA:
        h, w = img.shape[:2]
        while w >= 2 * width and h >= 2 * height and w % 2 == 0 and h % 2 == 0:
            img = cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
            h, w = img.shape[:2]
        if (w, h) == (width, height):
            return img
        interpolation = cv2.INTER_LINEAR if w >= width and h >= height else cv2.INTER_AREA
    return cv2.resize(img, (width, height), interpolation=interpolation)


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

    def scaled(
        self, width: int, height: int, interpolation: int = cv2.INTER_AREA, box: tuple[int, int, int, int] | None = None
    ) -> np.ndarray:
        """The whole frame, or ``box`` of it (x0, y0, x1, y1, even frame px), as RGB at
        width x height (even), made from the planes, not from ``rgb``."""
        x0, y0, x1, y1 = box if box is not None else (0, 0, self.width, self.height)
        if (x0 | y0 | x1 | y1) & 1:
            raise ValueError(f"box sides must be even, got {box}")
        if (width, height) == (x1 - x0, y1 - y0):
            return self.ensure(x0, y0, x1, y1)[y0:y1, x0:x1].copy()
        y, u, v = self.planes
        ys = shrink(y[y0:y1, x0:x1], width, height, interpolation)
        us = shrink(u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], width // 2, height // 2, interpolation)
        vs = shrink(v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], width // 2, height // 2, interpolation)
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

    def scaled(
        self, width: int, height: int, interpolation: int = cv2.INTER_AREA, box: tuple[int, int, int, int] | None = None
    ) -> np.ndarray:
        x0, y0, x1, y1 = box if box is not None else (0, 0, self.width, self.height)
        part = self.rgb[y0:y1, x0:x1]
        if (width, height) == (x1 - x0, y1 - y0):
            return part.copy()
        return shrink(part, width, height, interpolation)


def _benchmark() -> None:  # pragma: no cover - manual
    """The detector's input from a 1280x720 frame, ``shrink`` against one area resize,
    interleaved, one thread: ``python -m pipeline.frame_io``."""
    import time

    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    y = rng.integers(16, 235, (720, 1280), dtype=np.uint8)
    u, v = (rng.integers(16, 240, (360, 640), dtype=np.uint8) for _ in range(2))
    img = LazyRgb((y, u, v))

    def one_resize() -> np.ndarray:
        return i420_to_rgb(*(cv2.resize(p, s, interpolation=cv2.INTER_AREA) for p, s in ((y, (640, 352)), (u, (320, 176)), (v, (320, 176)))))

    runs: dict[str, list[float]] = {"one INTER_AREA resize": [], "shrink (LazyRgb.scaled)": []}
    fns = {"one INTER_AREA resize": one_resize, "shrink (LazyRgb.scaled)": lambda: img.scaled(640, 352)}
    for i in range(400):
        for name in (list(fns) if i % 2 else list(fns)[::-1]):
            t = time.perf_counter()
            fns[name]()
            runs[name].append((time.perf_counter() - t) * 1000.0)
    base = float(np.percentile(runs["one INTER_AREA resize"][20:], 50))
    for name, ms in runs.items():
        a = np.asarray(ms[20:])
        print(f"1280x720 -> 640x352 RGB, {name:26s} p50 {np.percentile(a, 50):5.2f} ms  p95 {np.percentile(a, 95):5.2f} ms  "
              f"({np.percentile(a, 50) / base:.2f}x)")


if __name__ == "__main__":  # pragma: no cover
    _benchmark()
