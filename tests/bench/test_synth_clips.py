"""The harder clips (``bench/synth_clips.py``): frames as described, and a folder mask_eval can read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import eval_lib as L
from bench import synth_clips as S
from bench.mask_eval import iter_frames, list_clips


def test_a_bar_covers_its_columns_and_moves() -> None:
    photo = np.full((100, 200, 3), 200, np.uint8)
    bar = S.Bar(100.0, 10.0, 50, (30, 30, 30))
    rng = np.random.default_rng(0)
    f0, f5 = S.group_frame(photo, 0, (bar,), rng), S.group_frame(photo, 5, (bar,), rng)
    assert f0.shape == (S.HEIGHT, S.WIDTH, 3)
    assert f0[:, 100:150].mean() < 50 and f0[:, 150:160].mean() > 100
    assert f5[:, 150:200].mean() < 50 and f5[:, 100:110].mean() > 100


def test_a_head_leaves_by_the_named_edge_and_comes_back() -> None:
    rgb = np.zeros((200, 200, 3), np.uint8)
    rgb[80:120, 10:40] = 255  # a bright patch in the picture's left quarter
    first, middle, last = (S.edge_frame(rgb, i, "right") for i in (0, (S.FRAMES - 1) // 2, S.FRAMES - 1))
    visible = lambda f: np.nonzero(f[:, :, 0].max(axis=0) == 255)[0]  # noqa: E731
    image_w = round(200 * min(S.WIDTH / 200, S.HEIGHT / 200) * 0.95)
    assert visible(first).min() < S.WIDTH / 2  # starts in the middle of the frame
    assert visible(middle).min() >= S.WIDTH - image_w // 4 - 1  # only the picture's left quarter is left in frame
    np.testing.assert_array_equal(visible(last), visible(first))  # and back
    with pytest.raises(ValueError):
        S.edge_frame(rgb, 0, "up")


def test_the_folder_reads_like_the_evaluation(tmp_path: Path) -> None:
    try:
        eval_dir = L.resolve_eval_dir()
    except L.EvalMediaMissing as exc:
        pytest.skip(str(exc))
    written = S.make(eval_dir, tmp_path, frames=3)
    assert len(written) == len(S.GROUP_PHOTOS) + len(S.EDGE_CLIPS)
    assert (tmp_path / "models" / "face_detection_yunet_2023mar.onnx").is_file()
    assert sorted(list_clips(tmp_path, None)) == sorted(written)
    frames = list(iter_frames(written[0], None))
    assert len(frames) == 3 and (frames[0].width, frames[0].height) == (S.WIDTH, S.HEIGHT)
