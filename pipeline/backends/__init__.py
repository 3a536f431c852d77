"""Stage backends. ``onnx`` (onnxruntime, CPU) is the one that runs today.

A TensorRT backend would build engines from the same ONNX files (``trt_engines/``) and
implement the protocols in ``pipeline/stages.py``; ``create_backend`` is where it plugs in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.stages import FaceDetectorStage, LandmarkStage, SegmenterStage


@dataclass
class Backend:
    detector: FaceDetectorStage
    landmarker: LandmarkStage
    segmenter: SegmenterStage | None


def create_backend(name: str = "onnxruntime", *, detect_width: int = 640, segmentation: bool = True, **options: Any) -> Backend:
    if name == "onnxruntime":
        from pipeline.backends.onnx import OnnxLandmarker, OnnxSegmenter, YuNetDetector

        return Backend(
            detector=YuNetDetector(detect_width=detect_width, **options),
            landmarker=OnnxLandmarker(),
            segmenter=OnnxSegmenter() if segmentation else None,
        )
    raise ValueError(f"unknown pipeline backend {name!r}; only 'onnxruntime' is available on this build")
