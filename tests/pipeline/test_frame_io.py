"""The masker's frame I/O: plane views, RGB made lazily, crops and scaled copies from planes."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from pipeline.backends.onnx import YuNetDetector, crop_matrix
from pipeline.frame_io import TILE, FullRgb, LazyRgb, copy_frame, plane_views, shrink, write_rgb_planes
from pipeline.types import CropRoi
from tests.helpers import have_shared_eval


def _frame(h: int, w: int, seed: int = 0) -> av.VideoFrame:
    """A smooth test picture (gradients and blobs: colour conversion differences stay small)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([xx / w * 255, yy / h * 255, 128 + 100 * np.sin(xx / 23.0 + seed) * np.cos(yy / 17.0)], axis=2)
    return av.VideoFrame.from_ndarray(np.clip(rgb, 0, 255).astype(np.uint8), format="rgb24").reformat(format="yuv420p")


@pytest.mark.parametrize("size", [(720, 1280), (362, 642)])  # 642: chroma lines padded past 321
def test_plane_views_are_the_frames_planes(size):
    h, w = size
    frame = _frame(h, w)
    y, u, v = plane_views(frame)
    packed = frame.to_ndarray()
    assert y.shape == (h, w) and u.shape == v.shape == (h // 2, w // 2)
    assert np.array_equal(y, packed[:h])
    q = (h // 2) * (w // 2)
    assert np.array_equal(u.ravel(), packed[h:].ravel()[:q])
    assert np.array_equal(v.ravel(), packed[h:].ravel()[q : 2 * q])


def test_copy_frame_is_independent_of_its_source():
    frame = _frame(120, 160)
    before = frame.to_ndarray().copy()
    out, planes = copy_frame(frame)
    assert np.array_equal(out.to_ndarray(), before)
    for p in planes:
        p[:] = 0
    assert np.array_equal(frame.to_ndarray(), before)
    assert out.to_ndarray().max() == 0


def test_lazy_rgb_matches_a_whole_frame_conversion():
    frame = _frame(362, 642)
    whole = cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
    img = LazyRgb(plane_views(frame), np.full((362, 642, 3), 7, np.uint8))
    img.ensure(50, 40, 300, 200)
    img.ensure(250, 150, 642, 362)  # overlaps the first, reaches the frame's edges
    assert np.array_equal(img.rgb[40:200, 50:300], whole[40:200, 50:300])
    assert np.array_equal(img.rgb[150:, 250:], whole[150:, 250:])
    assert (img.rgb[:TILE, -TILE:] == 7).all(), "regions never asked for are not converted"
    # and against the decoder's own conversion (swscale): the same picture
    assert np.abs(img.rgb[150:, 250:].astype(int) - frame.to_ndarray(format="rgb24")[150:, 250:]).mean() < 2.0


def test_a_changed_region_is_never_converted_again():
    """A swapped face must survive another stage asking for an overlapping region."""
    frame = _frame(240, 320)
    img = LazyRgb(plane_views(frame))
    img.ensure(64, 64, 160, 160)
    img.rgb[64:160, 64:160] = 255  # what a swap would do
    img.ensure(0, 0, 320, 240)
    assert (img.rgb[64:160, 64:160] == 255).all()


def test_warp_from_planes_matches_warping_the_rgb_frame():
    frame = _frame(720, 1280, seed=3)
    rgb = frame.to_ndarray(format="rgb24")
    for roi in (CropRoi(640, 300, 400, 0.3), CropRoi(60, 50, 300, -0.5)):  # the second reaches past the corner
        m = crop_matrix(roi, 192)
        a = LazyRgb(plane_views(frame)).warp(m, 192).astype(int)
        b = FullRgb(rgb).warp(m, 192).astype(int)
        assert a.shape == b.shape == (192, 192, 3)
        assert np.abs(a - b).mean() < 2.0


def test_scaled_from_planes_matches_scaling_the_rgb_frame():
    frame = _frame(720, 1280, seed=5)
    rgb = frame.to_ndarray(format="rgb24")
    # a linear 5x reduction samples points, and the chroma planes' points sit half a
    # full-resolution pixel apart from the RGB frame's: a little more difference there
    for size, interp, tol in (((640, 360), cv2.INTER_AREA, 2.0), ((256, 144), cv2.INTER_LINEAR, 4.0)):
        a = LazyRgb(plane_views(frame)).scaled(*size, interp).astype(int)
        b = cv2.resize(rgb, size, interpolation=interp).astype(int)
        assert a.shape == b.shape
        assert np.abs(a - b).mean() < tol


@pytest.mark.parametrize("src, dst", [((720, 1280), (352, 640)), ((1080, 1920), (352, 640)), ((360, 640), (176, 320)), ((720, 1280), (360, 640))])
def test_shrink_is_close_to_one_area_resize(src, dst):
    """Halvings then a linear step: the detector's input, made cheaply (``python -m pipeline.frame_io``)."""
    rgb = _frame(*src, seed=2).to_ndarray(format="rgb24")
    a = shrink(rgb, dst[1], dst[0]).astype(int)
    b = cv2.resize(rgb, (dst[1], dst[0]), interpolation=cv2.INTER_AREA).astype(int)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 1.5


def test_a_scaled_box_is_that_part_of_the_scaled_frame():
    """What a partial detector scan sees (pipeline/scan.py) is what a whole-frame pass sees there."""
    frame = _frame(720, 1280, seed=4)
    for img in (LazyRgb(plane_views(frame)), FullRgb(frame.to_ndarray(format="rgb24"))):
        whole = img.scaled(640, 360).astype(int)
        part = img.scaled(160, 96, box=(640, 192, 960, 384)).astype(int)
        assert part.shape == (96, 160, 3)
        assert np.abs(part - whole[96:192, 320:480]).mean() < 1.5
    with pytest.raises(ValueError, match="even"):
        LazyRgb(plane_views(frame)).scaled(80, 48, box=(1, 0, 161, 96))


def test_write_rgb_planes_touches_only_the_region():
    h, w = 120, 160
    frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), 40, np.uint8), format="rgb24").reformat(format="yuv420p")
    out, planes = copy_frame(frame)
    y_before = planes[0].copy()
    write_rgb_planes(planes, 20, 30, np.full((40, 60, 3), 220, np.uint8))
    rgb = out.to_ndarray(format="rgb24")
    assert np.abs(rgb[30:70, 20:80].astype(int) - 220).max() <= 3
    outside = np.ones((h, w), bool)
    outside[30:70, 20:80] = False
    assert (y_before[outside] == planes[0][outside]).all()


def test_detector_on_a_frame_scaled_from_planes_finds_the_same_faces():
    root = have_shared_eval()
    if root is None:
        pytest.skip("../shared/eval is absent: needs a real face")
    with av.open(str(root / "videos" / "lp_s18.mp4")) as c:
        frame = next(iter(c.decode(video=0))).reformat(width=1280, height=720, format="yuv420p")
    det = YuNetDetector()
    h, w = frame.height, frame.width
    direct = det.detect(frame.to_ndarray(format="rgb24"))
    small = LazyRgb(plane_views(frame)).scaled(*det.input_size(h, w))
    from_planes = det.detect(small, (h, w))
    assert len(direct) == len(from_planes) >= 1
    assert np.abs(direct[0].box - from_planes[0].box).max() < 3.0
    assert np.abs(direct[0].keypoints - from_planes[0].keypoints).max() < 3.0


@pytest.mark.parametrize(
    "hw, expected",
    [((720, 1280), (640, 352)), ((1080, 1920), (960, 544)), ((720, 720), (640, 640)), ((908, 480), (480, 908)), ((530, 1000), (640, 340))],
)
def test_detector_input_sizes_are_even_and_need_no_padding_where_close(hw, expected):
    """Sides within 3% of a multiple of 32 are scaled to it (no padding rows for the model);
    others stay even and are padded; frames under detect_width are not scaled at all."""
    det = YuNetDetector()
    size = det.input_size(*hw)
    assert size == expected
    assert all(s % 2 == 0 for s in size)
