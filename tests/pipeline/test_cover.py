from __future__ import annotations

import av
import numpy as np
import pytest

from pipeline.cover import blur, cover, cover_i420, i420_planes, pixelate


def _texture(h: int = 200, w: int = 160) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_pixelate_leaves_only_a_few_blocks():
    out = pixelate(_texture(), blocks=7)
    assert out.shape == (200, 160, 3)
    colours = {tuple(c) for c in out.reshape(-1, 3)}
    assert len(colours) <= 7 * 7


def test_blur_removes_detail():
    img = _texture()
    out = blur(img)
    assert out.shape == img.shape
    assert np.abs(np.diff(out.astype(int), axis=1)).mean() < 0.1 * np.abs(np.diff(img.astype(int), axis=1)).mean()


@pytest.mark.parametrize("size", [(36, 30), (60, 50), (480, 400)])
def test_blur_wipes_out_face_sized_detail_at_any_size(size):
    """Stripes a quarter of the box apart (about an eye's width on a face) are gone, on a
    small face as on a large one (the blur runs on a 16-cell copy whatever the size)."""
    h, w = size
    stripes = ((np.arange(w) * 8 // w) % 2 * 255).astype(np.uint8)
    img = np.repeat(np.tile(stripes, (h, 1))[:, :, None], 3, axis=2)
    out = blur(img)
    assert out.shape == img.shape
    row = out[h // 2, :, 0].astype(float)
    x = np.arange(w)
    ripple = row - np.polyval(np.polyfit(x, row, 1), x)  # what is left of the stripes beside a soft ramp
    assert ripple.std() < 0.05 * img.astype(float).std()


def test_cover_rejects_unknown_style():
    with pytest.raises(ValueError, match="cover style"):
        cover(_texture(), "sparkles")


@pytest.mark.parametrize("size", [(720, 1280), (362, 642)])
def test_cover_i420_changes_every_plane(size):
    h, w = size
    frame = av.VideoFrame.from_ndarray(_texture(h, w), format="rgb24").reformat(format="yuv420p")
    yuv = frame.to_ndarray()
    before = yuv.copy()
    cover_i420(yuv, h, w, "pixelate")
    for a, b in zip(i420_planes(before, h, w), i420_planes(yuv, h, w)):
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 10
