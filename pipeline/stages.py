"""Stage interfaces of the masking pipeline.

Each stage is a small Protocol; ``pipeline/backends/onnx.py`` implements them with
onnxruntime, on the CPU or (never run here) on a GPU through its CUDA or TensorRT provider.
Another backend implements the same protocols and slots in through
``pipeline.backends.create_backend`` without touching the pipeline.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from pipeline.persona import Persona
from pipeline.types import CropRoi, FaceDetection, FaceLandmarks, PersonMask


class FaceDetectorStage(Protocol):
    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(width, height) at which the detector looks at a frame of this size."""
        ...

    def detect(
        self, rgb: np.ndarray, frame_hw: tuple[int, int] | None = None, min_score: float | None = None
    ) -> list[FaceDetection]:
        """Every face in the image, boxes and keypoints in its pixels, best first.

        With ``frame_hw`` the image is a frame of that size already scaled to ``input_size``
        (the masker makes it from the frame's planes), and boxes come back in frame pixels.
        With ``min_score`` candidates down to that score come back too, under the detector's
        own line (the masker looks at such near misses again on the next frame).
        """
        ...


class LandmarkStage(Protocol):
    input_size: int  # side of the square crop the model reads

    def crop_matrix(self, roi: CropRoi) -> np.ndarray:
        """2x3 affine from image pixels to the model's crop of ``roi``."""
        ...

    def landmarks(self, rgb: np.ndarray, roi: CropRoi) -> FaceLandmarks:
        """468 points for the face inside ``roi`` of the full image, in image pixels."""
        ...

    def landmarks_from_crop(self, crop: np.ndarray, roi: CropRoi) -> FaceLandmarks:
        """The same from the crop (``crop_matrix``, ``input_size``) already made by the caller."""
        ...


class SegmenterStage(Protocol):
    def segment(self, rgb_small: np.ndarray, frame_hw: tuple[int, int]) -> PersonMask:
        """Person mask for a frame, given the frame already scaled to the model's input."""
        ...

    @property
    def input_hw(self) -> tuple[int, int]: ...


class SwapStage(Protocol):
    def swap(self, region: np.ndarray, points: np.ndarray, persona: Persona) -> None:
        """Replace the face in ``region`` (RGB, modified in place) by ``persona``.

        ``points``: the 468 live landmarks (468x2 or 468x3) in ``region`` pixels.
        A swapper may also say ``footprint(points) -> (x0, y0, x1, y1)``, the box outside
        which it changes nothing; the masker then hands it only that much of the frame
        (``MeshSwapper`` does; without it the masker uses the face box grown 30%).
        """
        ...
