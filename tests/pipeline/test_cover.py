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
