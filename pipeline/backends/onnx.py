"""onnxruntime backends of the detect, landmarks and segment stages (CPU, one thread).

Pre/post-processing follows the notes in ``pipeline/onnx_models.py`` and MANIFEST.json;
the landmark and segmentation runners are the ones the port tests check against
MediaPipe 0.10.21's own outputs.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from pipeline.onnx_models import (
    FACE_DETECTION_YUNET_DYNAMIC,
    FACE_LANDMARK,
    LANDMARK_INPUT_SIZE,
    SELFIE_SEGMENTATION,
    SELFIE_SEGMENTATION_LANDSCAPE,
    load_session,
    run_face_landmarks,
    run_selfie_segmentation,
)
from pipeline.types import CropRoi, FaceDetection, FaceLandmarks, PersonMask

_STRIDES = (8, 16, 32)
SNAP_32 = 0.03  # a detector input side this close to a multiple of 32 is scaled to it (no padding)


class YuNetDetector:
    """YuNet 2023mar: several faces, small ones too, with 5 keypoints.

    The image is scaled down to ``detect_width`` (never up, and never below half its
    size: a 1080p crowd's 40 px faces would shrink to 13 px at 640 and be missed), to sides
    that are multiples of 32 where that is a small change (``input_size``), padded to them
    otherwise, and run through the dynamic-shape graph; boxes come back in the caller's
    pixels.
    """

    def __init__(
        self,
        *,
        detect_width: int = 640,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        max_faces: int = 32,
        min_scale: float = 0.5,
        models_dir: str | Path | None = None,
        providers: list[str] | None = None,
    ) -> None:
        self.min_scale = min_scale
        self.detect_width = detect_width
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_faces = max_faces
        self.session = load_session(FACE_DETECTION_YUNET_DYNAMIC, models_dir=models_dir, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._priors: dict[tuple[int, int], list[np.ndarray]] = {}

    def _grid(self, h: int, w: int) -> list[np.ndarray]:
        key = (h, w)
        if key not in self._priors:
            grids = []
            for s in _STRIDES:
                gy, gx = np.mgrid[0 : h // s, 0 : w // s]
                grids.append(np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32))
            self._priors[key] = grids
        return self._priors[key]

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(width, height) the detector runs a frame of this size at: even (the masker makes
        it straight from the yuv420p planes), and a side that is within SNAP_32 of a multiple
        of 32 is scaled to it, so no rows are spent on padding (1280x720 runs at 640x352, a
        2% squeeze, rather than 640x360 padded to 384: 8% less detector work)."""
        scale = min(1.0, max(self.detect_width / float(width), self.min_scale))
        if scale >= 1.0:
            return width, height

        def side(n: float) -> int:
            snapped = 32 * round(n / 32)
            return snapped if snapped >= 32 and abs(snapped - n) <= SNAP_32 * n else max(32, 2 * round(n / 2))

        return side(width * scale), side(height * scale)

    def detect(
        self, rgb: np.ndarray, frame_hw: tuple[int, int] | None = None, min_score: float | None = None
    ) -> list[FaceDetection]:
        """Faces in ``rgb``; with ``frame_hw``, ``rgb`` is that frame already scaled (to
        ``input_size``) and boxes come back in the frame's pixels; with ``min_score``, the
        candidates down to that score as well (``score_threshold`` is the line for a face)."""
        line = self.score_threshold if min_score is None else min(min_score, self.score_threshold)
        if frame_hw is None:
            h, w = rgb.shape[:2]
            sw, sh = self.input_size(h, w)
            small = rgb if (sw, sh) == (w, h) else cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
        else:
            h, w = frame_hw
            small = rgb
            sh, sw = rgb.shape[:2]
        scale_x, scale_y = w / float(sw), h / float(sh)
        ph, pw = -(-sh // 32) * 32, -(-sw // 32) * 32
        blob = np.zeros((1, 3, ph, pw), np.float32)
        blob[0, :, :sh, :sw] = small[:, :, ::-1].transpose(2, 0, 1)  # RGB -> BGR, NCHW
        outputs = dict(zip(self.output_names, self.session.run(None, {self.input_name: blob})))
        boxes, scores, kps = [], [], []
        for s, grid in zip(_STRIDES, self._grid(ph, pw)):
            cls = np.clip(outputs[f"cls_{s}"][0, :, 0], 0, 1)
            obj = np.clip(outputs[f"obj_{s}"][0, :, 0], 0, 1)
            score = np.sqrt(cls * obj)
            keep = score >= line
            if not keep.any():
                continue
            g = grid[keep]
            bb = outputs[f"bbox_{s}"][0][keep]
            centre = (g + bb[:, 0:2]) * s
            size = np.exp(bb[:, 2:4]) * s
            boxes.append(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
            scores.append(score[keep])
            k = outputs[f"kps_{s}"][0][keep].reshape(-1, 5, 2)
            kps.append((g[:, None, :] + k) * s)
        if not boxes:
            return []
        box = np.concatenate(boxes)
        score = np.concatenate(scores)
        kp = np.concatenate(kps)
        xywh = np.concatenate([box[:, :2], box[:, 2:] - box[:, :2]], axis=1)
        keep = cv2.dnn.NMSBoxes(xywh.tolist(), score.tolist(), line, self.nms_threshold)
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)[: self.max_faces]
        inv = np.array([scale_x, scale_y], np.float64)
        out = []
        for i in keep:
            b = np.clip(box[i] * np.tile(inv, 2), [0, 0, 0, 0], [w, h, w, h]).astype(np.float32)
            if b[2] - b[0] < 2 or b[3] - b[1] < 2:
                continue
            out.append(FaceDetection(b, float(score[i]), (kp[i] * inv).astype(np.float32)))
        out.sort(key=lambda d: -d.score)
        return out


def crop_matrix(roi: CropRoi, out_size: int = LANDMARK_INPUT_SIZE) -> np.ndarray:
    """2x3 affine taking image pixels to the rotated square crop's pixels."""
    c, s = math.cos(roi.rotation), math.sin(roi.rotation)
    k = out_size / roi.size
    # crop = k * R(-rotation) @ (p - centre) + out_size/2
    a = np.array([[c, s], [-s, c]], np.float64) * k
    t = np.array([out_size / 2, out_size / 2]) - a @ np.array([roi.cx, roi.cy])
    return np.concatenate([a, t[:, None]], axis=1)


class OnnxLandmarker:
    """MediaPipe's 468-point face mesh on a rotated square crop of the full frame."""

    def __init__(self, models_dir: str | Path | None = None, providers: list[str] | None = None) -> None:
        self.session = load_session(FACE_LANDMARK, models_dir=models_dir, providers=providers)

    input_size = LANDMARK_INPUT_SIZE

    def crop_matrix(self, roi: CropRoi) -> np.ndarray:
        return crop_matrix(roi, LANDMARK_INPUT_SIZE)

    def landmarks(self, rgb: np.ndarray, roi: CropRoi) -> FaceLandmarks:
        crop = cv2.warpAffine(
            rgb, crop_matrix(roi), (LANDMARK_INPUT_SIZE, LANDMARK_INPUT_SIZE), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
        )
        return self.landmarks_from_crop(crop, roi)

    def landmarks_from_crop(self, crop: np.ndarray, roi: CropRoi) -> FaceLandmarks:
        """The same, given the crop already made (the masker warps it from the frame's planes)."""
        m = crop_matrix(roi)
        pts, presence = run_face_landmarks(self.session, crop)
        inv = cv2.invertAffineTransform(m)
        xy = pts[:, :2] @ inv[:, :2].T + inv[:, 2]
        z = pts[:, 2:3] * (roi.size / LANDMARK_INPUT_SIZE)
        return FaceLandmarks(np.concatenate([xy, z], axis=1).astype(np.float32), presence)


class OnnxSegmenter:
    """MediaPipe selfie segmentation (the landscape 144x256 graph: cheapest, fits 16:9)."""

    def __init__(self, landscape: bool = True, models_dir: str | Path | None = None, providers: list[str] | None = None) -> None:
        self.session = load_session(SELFIE_SEGMENTATION_LANDSCAPE if landscape else SELFIE_SEGMENTATION, models_dir=models_dir, providers=providers)
        shape = self.session.get_inputs()[0].shape
        self._hw = (int(shape[1]), int(shape[2]))

    @property
    def input_hw(self) -> tuple[int, int]:
        return self._hw

    def segment(self, rgb_small: np.ndarray, frame_hw: tuple[int, int]) -> PersonMask:
        return PersonMask(run_selfie_segmentation(self.session, rgb_small), frame_hw)
