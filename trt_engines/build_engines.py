"""Build the TensorRT engines of the masking pipeline, and check them against the CPU.

Usage (from the repository root, on a machine with a CUDA GPU, onnxruntime-gpu and
TensorRT; see README "GPU")::

    python -m trt_engines.build_engines [--cache DIR]

onnxruntime's TensorRT provider builds an engine from each ONNX file the first time a
session starts (minutes) and keeps it in the cache (``trt_engines/cache``, or
``HIKARIEDGE_TRT_CACHE``, or ``--cache``), so a node started afterwards comes up at once.
This script starts each model's session with the options the node uses
(``pipeline.onnx_models.tensorrt_provider_options``), runs it on fixed inputs (the detector
at every shape class it meets: a whole 1280x720 frame's 640x352, a small crop, the
profile's smallest and largest), and compares the outputs with the CPU provider's on the
same inputs. It exits 1 when they differ by more than the tolerances below, 2 when this
machine cannot run TensorRT.

**It has never run**: no machine of this project has had a GPU. The tolerances are what the
port itself is held to (``tests/pipeline/test_model_port.py``: landmarks within 1 px, masks
at IoU 0.99), tightened: the engines are FP32, though TensorRT may run FP32 layers as TF32
on recent GPUs, which is what the tolerances leave room for.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# largest difference allowed between the TensorRT and the CPU outputs, per model
LANDMARK_TOLERANCE_PX = 0.5  # 468 points, in 192x192 crop pixels
SEGMENT_TOLERANCE = 0.02  # person probability
DETECT_SCORE_TOLERANCE = 0.02  # the cls and obj outputs (a face's score is their geometric mean)


@dataclass
class Check:
    model: str
    shape: tuple[int, ...]
    seconds: float  # this run on TensorRT; a model's first includes its engine build (or load from the cache)
    max_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_diff <= self.tolerance


def _inputs(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Fixed inputs per model: smooth noise (a convolutional model's outputs on white noise
    say little) in each model's own layout and range."""

    def smooth(h: int, w: int, c: int, scale: float) -> np.ndarray:
        low = rng.random((max(1, h // 8), max(1, w // 8), c)).astype(np.float32)
        up = np.kron(low, np.ones((8, 8, 1), np.float32))[:h, :w]
        pad = np.zeros((h, w, c), np.float32)
        pad[: up.shape[0], : up.shape[1]] = up
        return pad * scale

    from pipeline.onnx_models import TRT_PROFILE_HW

    detector_hw = [(352, 640), (96, 128), TRT_PROFILE_HW["min"], TRT_PROFILE_HW["max"]]
    return {
        "face_detection_yunet_2023mar_dynamic": [smooth(h, w, 3, 255.0).transpose(2, 0, 1)[None] for h, w in detector_hw],
        "face_landmark": [smooth(192, 192, 3, 1.0)[None]],
        "selfie_segmentation_landscape": [smooth(144, 256, 3, 1.0)[None]],
        "selfie_segmentation": [smooth(256, 256, 3, 1.0)[None]],
    }


def _max_diff(model: str, names: list[str], cpu: list[np.ndarray], trt: list[np.ndarray]) -> tuple[float, float]:
    """(largest difference that counts, its tolerance) for one model's outputs."""
    if model == "face_landmark":
        return float(np.abs(cpu[0] - trt[0]).max()), LANDMARK_TOLERANCE_PX
    if model.startswith("selfie_segmentation"):
        return float(np.abs(cpu[0] - trt[0]).max()), SEGMENT_TOLERANCE
    scores = [(a, b) for name, a, b in zip(names, cpu, trt) if name.startswith(("cls_", "obj_"))]
    if not scores:
        raise ValueError(f"{model}: no cls_/obj_ outputs among {names}")
    # clipped to [0, 1] as the decoder reads them (pipeline/backends/onnx.py)
    return max(float(np.abs(np.clip(a, 0, 1) - np.clip(b, 0, 1)).max()) for a, b in scores), DETECT_SCORE_TOLERANCE


def build_and_check(cache: Path, execution_provider: str = "tensorrt") -> list[Check]:
    """Each model on ``execution_provider`` against the CPU provider (the tests run it with
    ``cpu`` against itself: everything but TensorRT itself)."""
    from pipeline.onnx_models import load_session, providers_for

    providers = providers_for(execution_provider)  # ValueError where this machine lacks it
    checks = []
    before = os.environ.get("HIKARIEDGE_TRT_CACHE")
    os.environ["HIKARIEDGE_TRT_CACHE"] = str(cache)  # where load_session's TensorRT options put the engines
    try:
        for model, batches in _inputs(np.random.default_rng(0)).items():
            cpu = load_session(model)
            trt = load_session(model, providers=providers)
            names = [o.name for o in trt.get_outputs()]
            feed = trt.get_inputs()[0].name
            for x in batches:
                t = time.perf_counter()
                got = trt.run(None, {feed: x})
                took = time.perf_counter() - t
                diff, tolerance = _max_diff(model, names, cpu.run(None, {feed: x}), got)
                checks.append(Check(model, tuple(x.shape), took, diff, tolerance))
    finally:
        if before is None:
            os.environ.pop("HIKARIEDGE_TRT_CACHE", None)
        else:
            os.environ["HIKARIEDGE_TRT_CACHE"] = before
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=None, help="engine cache folder (default trt_engines/cache)")
    args = parser.parse_args(argv)
    from pipeline.onnx_models import TRT_CACHE_DIR

    cache = args.cache or Path(os.environ.get("HIKARIEDGE_TRT_CACHE") or TRT_CACHE_DIR)
    try:
        checks = build_and_check(cache)
    except ValueError as exc:
        print(f"cannot build TensorRT engines here: {exc}", file=sys.stderr)
        return 2
    for c in checks:
        mark = "ok" if c.ok else "DIFFERS"
        print(f"{c.model:40s} {'x'.join(map(str, c.shape)):>14s}  {c.seconds:7.2f} s  max diff {c.max_diff:.2e} (<= {c.tolerance:g})  {mark}")
    print(f"engines in {cache}")
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
