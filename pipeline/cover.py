"""Cover styles: pixelate and blur a region, or the whole frame.

Used by the privacy guard (anything that cannot be swapped is covered) and by sessions
in ``blur`` / ``pixelate`` mode. Strong by design: a covered face must not be
recognisable (shared/eval's recognizer drops from 0.71 to 0.03 on a Gaussian-blurred face).
"""

from __future__ import annotations

import cv2
import numpy as np

COVER_STYLES = ("pixelate", "blur")
FACE_BLOCKS = 7  # pixel blocks across a covered face
FRAME_BLOCKS = 24  # pixel blocks across a fully covered frame
BLUR_GRID = 16  # cells across the small copy a blur is done on


def pixelate(region: np.ndarray, blocks: int = FACE_BLOCKS) -> np.ndarray:
    """Mosaic with about ``blocks`` cells across the longer side (any number of channels)."""
    h, w = region.shape[:2]
    if h == 0 or w == 0:
        return region
    cell = max(1.0, max(h, w) / blocks)
    gw, gh = max(1, round(w / cell)), max(1, round(h / cell))
    small = cv2.resize(region, (gw, gh), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def blur(region: np.ndarray, strength: float = 0.18) -> np.ndarray:
    """Gaussian blur with sigma ``strength`` x the region's longer side.

    Done on a copy ``BLUR_GRID`` cells across and scaled back: the blur is three cells wide,
    so the small copy loses nothing it would keep, and a 50 px face costs about 0.1 ms
    instead of 1.6 ms blurred at its own size (docs/benchmarks.md).
    """
    h, w = region.shape[:2]
    if h == 0 or w == 0:
        return region
    cell = max(1.0, max(h, w) / BLUR_GRID)
    gw, gh = max(1, round(w / cell)), max(1, round(h / cell))
    small = cv2.resize(region, (gw, gh), interpolation=cv2.INTER_AREA)
    sigma = max(1.0, strength * max(gw, gh))
    small = cv2.GaussianBlur(small, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def cover(region: np.ndarray, style: str) -> np.ndarray:
    if style == "pixelate":
        return pixelate(region)
    if style == "blur":
        return blur(region)
    raise ValueError(f"unknown cover style {style!r} (one of {', '.join(COVER_STYLES)})")


def i420_planes(yuv: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y, U and V planes of a contiguous I420 array (PyAV's (H*3/2)xW layout)."""
    flat = yuv.reshape(-1)
    ysz, csz = height * width, (height // 2) * (width // 2)
    return (
        flat[:ysz].reshape(height, width),
        flat[ysz : ysz + csz].reshape(height // 2, width // 2),
        flat[ysz + csz : ysz + 2 * csz].reshape(height // 2, width // 2),
    )


def cover_i420(yuv: np.ndarray, height: int, width: int, style: str = "pixelate") -> None:
    """Cover a whole I420 frame in place, plane by plane."""
    for i, plane in enumerate(i420_planes(yuv, height, width)):
        if style == "pixelate":
            plane[:] = pixelate(plane, FRAME_BLOCKS if i == 0 else FRAME_BLOCKS // 2)
        else:
            plane[:] = blur(plane)
