"""Stage backends. ``onnx`` (onnxruntime) is the one there is: on the CPU, and with
``execution_provider`` ``cuda`` or ``tensorrt`` the same ONNX files run on onnxruntime-gpu's
CUDA provider or as TensorRT engines through its TensorRT provider
(``pipeline.onnx_models.tensorrt_provider_options``; engines built and checked by
``trt_engines/build_engines.py``). Neither GPU path has run: none of this project's
machines has had a GPU. The pre- and post-processing stays numpy on the CPU.

A backend of another kind (TensorRT's own runtime, say, with the pre-processing on the GPU)
would implement the protocols in ``pipeline/stages.py``; ``create_backend`` is where it plugs in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.stages import FaceDetectorStage, LandmarkStage, SegmenterStage


@dataclass
class Backend:
    detector: FaceDetectorStage
    landmarker: LandmarkStage
    segmenter: SegmenterStage | None


def create_backend(
    name: str = "onnxruntime",
    *,
    detect_width: int = 640,
    segmentation: bool = True,
    models_dir: str | Path | None = None,
    execution_provider: str = "cpu",
    **options: Any,
) -> Backend:
    """``models_dir``: another folder of model files with its MANIFEST.json (default
    ``pipeline/models``); benchmarks use it to compare two exports in one run.
    ``execution_provider``: cpu, cuda or tensorrt (``pipeline.onnx_models.providers_for``)."""
    if name == "onnxruntime":
        from pipeline.backends.onnx import OnnxLandmarker, OnnxSegmenter, YuNetDetector
        from pipeline.onnx_models import providers_for

        providers = providers_for(execution_provider)
        return Backend(
            detector=YuNetDetector(detect_width=detect_width, models_dir=models_dir, providers=providers, **options),
            landmarker=OnnxLandmarker(models_dir=models_dir, providers=providers),
            segmenter=OnnxSegmenter(models_dir=models_dir, providers=providers) if segmentation else None,
        )
    raise ValueError(f"unknown pipeline backend {name!r}; only 'onnxruntime' is available on this build")


def backend_for(config: Any, models_dir: str | Path | None = None) -> Backend:
    """The backend a ``PipelineConfig`` asks for (the masker's default; benchmarks add ``models_dir``)."""
    return create_backend(
        detect_width=config.detect_width,
        segmentation=config.segmentation,
        score_threshold=config.detect_score,
        models_dir=models_dir,
        execution_provider=config.execution_provider,
    )
