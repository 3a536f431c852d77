"""``trt_engines/build_engines.py``: everything but TensorRT itself, which never ran here.

The script's comparison runs with the CPU provider against itself (the same inputs at the
detector profile's extremes, the same tolerances), its tolerance check is shown to fail on
a changed output, and on this machine the script refuses with exit code 2 and says why.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from trt_engines import build_engines  # noqa: E402
from trt_engines.build_engines import build_and_check  # noqa: E402


def test_every_model_and_detector_shape_is_compared(tmp_path):
    checks = build_and_check(tmp_path / "cache", execution_provider="cpu")
    models = {c.model for c in checks}
    assert models == {"face_detection_yunet_2023mar_dynamic", "face_landmark", "selfie_segmentation_landscape", "selfie_segmentation"}
    detector_shapes = {c.shape for c in checks if c.model.startswith("face_detection")}
    assert detector_shapes == {(1, 3, 352, 640), (1, 3, 96, 128), (1, 3, 32, 32), (1, 3, 1088, 1920)}
    assert all(c.ok and c.max_diff == 0.0 for c in checks)  # the CPU against itself


def test_a_changed_output_fails_its_tolerance():
    rng = np.random.default_rng(1)
    lm = rng.random((1, 1, 1, 1404), np.float32) * 192
    diff, tol = build_engines._max_diff("face_landmark", ["conv2d_21"], [lm], [lm + 0.6])
    assert diff == pytest.approx(0.6, abs=1e-4) and diff > tol
    cls = np.full((1, 100, 1), 0.9, np.float32)
    names = ["cls_8", "bbox_8"]
    diff, tol = build_engines._max_diff("face_detection_yunet_2023mar_dynamic", names, [cls, cls], [cls - 0.05, cls + 9])
    assert diff == pytest.approx(0.05, abs=1e-6) and diff > tol  # scores only: the bbox output is not a score
    seg = np.zeros((1, 144, 256, 1), np.float32)
    assert build_engines._max_diff("selfie_segmentation_landscape", ["segment_back"], [seg], [seg + 0.01])[0] <= build_engines.SEGMENT_TOLERANCE


def test_refused_here_with_exit_code_2(tmp_path):
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has TensorRT: the script would build engines")
    done = subprocess.run(
        [sys.executable, "-m", "trt_engines.build_engines", "--cache", str(tmp_path)], capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2
    assert "cannot build TensorRT engines here" in done.stderr and "TensorrtExecutionProvider" in done.stderr
    assert not any(tmp_path.iterdir())  # nothing half-built left behind


def test_the_cache_folder_is_set_only_while_it_builds(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("HIKARIEDGE_TRT_CACHE", raising=False)
    build_and_check(tmp_path / "cache", execution_provider="cpu")
    assert "HIKARIEDGE_TRT_CACHE" not in os.environ
