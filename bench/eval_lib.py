"""Measurement helpers of the masking evaluation (``bench/mask_eval.py``).

Everything here reads the evaluation media in place from ``../shared/eval`` (real people's
faces, collected from public repositories; see its README). Nothing from there is copied
into the repository.

The referee models are deliberately *not* the pipeline's own code path:

- the independent face detector runs ``shared/eval``'s YuNet ONNX file through OpenCV's DNN
  module (not onnxruntime) at the frame's full resolution (padded to a multiple of 32; the
  pipeline scales frames down to ``detect_width``) with our own output decoding and NMS;
- identity leakage is measured with a face recognizer the pipeline never uses
  (MobileFaceNet, 128-d, ``shared/eval/models/mobilefacenet_foamliu_vface.onnx``).

Conventions as in ``pipeline/``: images are uint8 HxWx3 RGB, boxes (x0, y0, x1, y1) in
pixels, YuNet's 5 keypoints in the order right eye, left eye, nose, right mouth corner,
left mouth corner (the subject's right eye is on the image's left).
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EVAL_DIR = REPO_ROOT.parent / "shared" / "eval"


def default_eval_dir() -> Path:
    """``$HIKARIEDGE_EVAL_DIR``, else the nearest ``shared/eval`` beside the checkout or one of
    its parents (a CI checkout may sit a level deeper than the development one)."""
    env = os.environ.get("HIKARIEDGE_EVAL_DIR")
    if env:
        return Path(env)
    for parent in REPO_ROOT.parents:
        candidate = parent / "shared" / "eval"
        if candidate.is_dir():
            return candidate
    return DEFAULT_EVAL_DIR

YUNET_FILE = "models/face_detection_yunet_2023mar.onnx"
RECOGNIZER_FILE = "models/mobilefacenet_foamliu_vface.onnx"
DLIB_DIR = "images/dlib_faces"
DLIB_XMLS = ("training.xml", "testing.xml")

# The standard 5-point ArcFace template for a 112x112 crop (insightface), in YuNet's
# keypoint order: image-left eye, image-right eye, nose, image-left and image-right mouth corner.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    np.float64,
)
ALIGNED_SIZE = 112

LEAK_COSINE = 0.35  # recognizer cosine at or above which the output still shows the input's identity
STREAM_MATCH_IOU = 0.3  # an output face stands for the input face it overlaps this much (stream-aligned leak)
UNCHANGED_MEAN_ABS_DIFF = 3.0  # mean |output - input| (0-255, over the face box) below which the face was left as is
# A face counts for the identity measure only if the recognizer tells it apart from a
# featureless version of itself: cosine(face, Gaussian-blurred face) < LEAK_COSINE, blur sigma
# in aligned-crop pixels (the eyes are ~35 px apart there). Profiles, backs of heads, tiny or
# motion-blurred faces and false detections embed close to any blob, so a masked output
# (blurred, pixelated, covered) "matches" them too: the recognizer cannot judge those.
IDENTIFIABLE_BLUR_SIGMA = 5.0
LANDMARK_CROP_SCALE = 1.5  # landmark crop side = 1.5 x the detection box's longer side (MediaPipe's rule)
LANDMARK_PRESENCE = 0.5  # MediaPipe drops a face whose presence score is below this


class EvalMediaMissing(FileNotFoundError):
    """The evaluation media (``../shared/eval``) or one of its files is not there."""


def resolve_eval_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The evaluation media folder: ``path``, else :func:`default_eval_dir`.

    Raises :class:`EvalMediaMissing` with a readable message when it is not there.
    """
    if path is None:
        path = default_eval_dir()
    p = Path(path).resolve()
    if not p.is_dir() or not (p / YUNET_FILE).is_file() or not (p / RECOGNIZER_FILE).is_file():
        raise EvalMediaMissing(
            f"evaluation media not found at {p} (expected ../shared/eval with {YUNET_FILE} and {RECOGNIZER_FILE}); "
            "it is not part of the repository, so the masking evaluation is skipped"
        )
    return p


# --------------------------------------------------------------------------- boxes


def iou(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 when either is empty."""
    ax0, ay0, ax1, ay1 = (float(v) for v in a[:4])
    bx0, by0, bx1, by1 = (float(v) for v in b[:4])
    iw = min(ax1, bx1) - max(ax0, bx0)
    ih = min(ay1, by1) - max(ay0, by0)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = max(ax1 - ax0, 0.0) * max(ay1 - ay0, 0.0) + max(bx1 - bx0, 0.0) * max(by1 - by0, 0.0) - inter
    return inter / union if union > 0 else 0.0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of N and M boxes (Nx4, Mx4) -> NxM."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_boxes(gt: np.ndarray, det: np.ndarray, threshold: float = 0.5) -> list[int | None]:
    """One-to-one greedy matching (highest IoU first): for each ground-truth box, the index of
    its detection (IoU >= ``threshold``) or None."""
    m = iou_matrix(gt, det)
    result: list[int | None] = [None] * m.shape[0]
    if not m.size:
        return result
    pairs = sorted(((m[i, j], i, j) for i in range(m.shape[0]) for j in range(m.shape[1]) if m[i, j] >= threshold), reverse=True)
    used_gt: set[int] = set()
    used_det: set[int] = set()
    for _, i, j in pairs:
        if i in used_gt or j in used_det:
            continue
        result[i] = j
        used_gt.add(i)
        used_det.add(j)
    return result


def recall(gt_boxes: Iterable[np.ndarray], det_boxes: Iterable[np.ndarray], threshold: float = 0.5) -> tuple[int, int]:
    """(matched, total) over paired lists of per-image ground truth and detections."""
    hit = total = 0
    for gt, det in zip(gt_boxes, det_boxes):
        matches = match_boxes(np.asarray(gt).reshape(-1, 4), np.asarray(det).reshape(-1, 4), threshold)
        hit += sum(m is not None for m in matches)
        total += len(matches)
    return hit, total


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression; indices kept, best first."""
    order = list(np.argsort(-np.asarray(scores)))
    keep: list[int] = []
    boxes = np.asarray(boxes, np.float64)
    while order:
        i = order.pop(0)
        keep.append(int(i))
        if not order:
            break
        rest = np.asarray(order)
        overlap = iou_matrix(boxes[i : i + 1], boxes[rest])[0]
        order = [int(j) for j, o in zip(rest, overlap) if o <= threshold]
    return keep


def clip_box(box: np.ndarray, w: int, h: int) -> tuple[int, int, int, int]:
    """Integer pixel box inside the image (may be empty)."""
    x0 = int(np.clip(math.floor(box[0]), 0, w))
    y0 = int(np.clip(math.floor(box[1]), 0, h))
    x1 = int(np.clip(math.ceil(box[2]), 0, w))
    y1 = int(np.clip(math.ceil(box[3]), 0, h))
    return x0, y0, x1, y1


def box_mean_abs_diff(a: np.ndarray, b: np.ndarray, box: np.ndarray) -> float:
    """Mean |a - b| (0-255, all channels) over ``box``; NaN when the box is empty."""
    h, w = a.shape[:2]
    x0, y0, x1, y1 = clip_box(box, w, h)
    if x1 <= x0 or y1 <= y0:
        return float("nan")
    pa = a[y0:y1, x0:x1].astype(np.int16)
    pb = b[y0:y1, x0:x1].astype(np.int16)
    return float(np.abs(pa - pb).mean())


# --------------------------------------------------------------------------- detector


@dataclass(frozen=True)
class Face:
    """An independent detection: box (x0, y0, x1, y1), score, 5 keypoints (5x2)."""

    box: np.ndarray
    score: float
    kps: np.ndarray

    @property
    def size(self) -> float:
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def inter_ocular(self) -> float:
        return float(np.linalg.norm(self.kps[0] - self.kps[1]))


class IndependentYuNet:
    """``shared/eval``'s YuNet through OpenCV DNN at full resolution, our own decoding.

    The frame (optionally scaled down so its longer side is at most ``max_side``) is padded
    bottom/right with zeros to a multiple of 32 and fed as BGR 0-255 NCHW. Per stride s in
    (8, 16, 32) there is one prior per cell of the (H/s) x (W/s) grid, row-major:
    score = sqrt(clip(cls) * clip(obj)), centre = (cell + bbox[0:2]) * s,
    size = exp(bbox[2:4]) * s, keypoints = (cell + kps) * s; then greedy NMS.
    """

    STRIDES = (8, 16, 32)

    def __init__(self, eval_dir: Path, *, score_threshold: float = 0.6, nms_threshold: float = 0.3, top_k: int = 5000) -> None:
        path = Path(eval_dir) / YUNET_FILE
        if not path.is_file():
            raise EvalMediaMissing(f"{path} is missing")
        self.net = cv2.dnn.readNetFromONNX(str(path))
        self.out_names = list(self.net.getUnconnectedOutLayersNames())
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k

    def detect(self, rgb: np.ndarray, *, max_side: int | None = None) -> list[Face]:
        h, w = rgb.shape[:2]
        scale = 1.0
        img = rgb
        if max_side is not None and max(h, w) > max_side:
            scale = max_side / float(max(h, w))
            img = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        sh, sw = img.shape[:2]
        ph, pw = -(-sh // 32) * 32, -(-sw // 32) * 32
        blob = np.zeros((1, 3, ph, pw), np.float32)
        blob[0, :, :sh, :sw] = img[:, :, ::-1].transpose(2, 0, 1)
        self.net.setInput(blob)
        outs = dict(zip(self.out_names, self.net.forward(self.out_names)))
        boxes, scores, kps = [], [], []
        for s in self.STRIDES:
            rows, cols = ph // s, pw // s
            cls = np.clip(outs[f"cls_{s}"].reshape(-1), 0, 1)
            obj = np.clip(outs[f"obj_{s}"].reshape(-1), 0, 1)
            score = np.sqrt(cls * obj)
            idx = np.nonzero(score >= self.score_threshold)[0]
            if not len(idx):
                continue
            assert cls.shape[0] == rows * cols, (cls.shape, rows, cols)
            cell = np.stack([idx % cols, idx // cols], axis=1).astype(np.float32)
            bb = outs[f"bbox_{s}"].reshape(-1, 4)[idx]
            centre = (cell + bb[:, :2]) * s
            size = np.exp(bb[:, 2:4]) * s
            boxes.append(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
            scores.append(score[idx])
            kps.append((cell[:, None, :] + outs[f"kps_{s}"].reshape(-1, 5, 2)[idx]) * s)
        if not boxes:
            return []
        box = np.concatenate(boxes)
        score = np.concatenate(scores)
        kp = np.concatenate(kps)
        if len(score) > self.top_k:
            top = np.argsort(-score)[: self.top_k]
            box, score, kp = box[top], score[top], kp[top]
        faces = []
        for i in nms(box, score, self.nms_threshold):
            b = box[i] / scale
            b = np.array([max(b[0], 0), max(b[1], 0), min(b[2], w), min(b[3], h)], np.float32)
            if b[2] - b[0] < 2 or b[3] - b[1] < 2:
                continue
            faces.append(Face(b, float(score[i]), (kp[i] / scale).astype(np.float32)))
        return faces


def yunet_detect_full(detector: IndependentYuNet, rgb: np.ndarray, max_side: int | None = None) -> list[Face]:
    """Every face the independent detector finds in ``rgb`` (full resolution unless ``max_side``)."""
    return detector.detect(rgb, max_side=max_side)


# --------------------------------------------------------------------------- recognizer


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking ``src`` to
    ``dst`` points (Umeyama 1991). Returns a 2x3 matrix for cv2.warpAffine."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    var_s = (s0**2).sum() / len(src)
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * r @ mu_s
    return np.concatenate([scale * r, t[:, None]], axis=1)


def alignment_matrix(kps5: np.ndarray) -> np.ndarray:
    """2x3 similarity taking the 5 keypoints onto the ArcFace 112x112 template."""
    return similarity_transform(np.asarray(kps5, np.float64).reshape(5, 2), ARCFACE_TEMPLATE)


def align_face(frame_rgb: np.ndarray, kps5: np.ndarray | None = None, matrix: np.ndarray | None = None) -> np.ndarray:
    """112x112 RGB face aligned to the ArcFace template.

    Give ``kps5`` (5 YuNet keypoints in ``frame_rgb`` pixels) or a ``matrix`` from
    :func:`alignment_matrix`: pass the *input* face's matrix to crop the output frame at
    exactly the same place.
    """
    if matrix is None:
        if kps5 is None:
            raise ValueError("align_face needs kps5 or matrix")
        matrix = alignment_matrix(kps5)
    return cv2.warpAffine(frame_rgb, matrix, (ALIGNED_SIZE, ALIGNED_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("HIKARIEDGE_ORT_THREADS", "1"))
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class Recognizer:
    """MobileFaceNet (128-d): 1x3x112x112 RGB scaled (x - 127.5) / 128, L2-normalised output."""

    def __init__(self, eval_dir: Path) -> None:
        path = Path(eval_dir) / RECOGNIZER_FILE
        if not path.is_file():
            raise EvalMediaMissing(f"{path} is missing")
        self.session = _ort_session(path)
        self.input_name = self.session.get_inputs()[0].name

    def embed(self, faces112: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """(N, 128) unit vectors for N aligned 112x112 RGB uint8 faces (or one HxWx3 face -> (1, 128))."""
        arr = np.asarray(faces112)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[1:] != (ALIGNED_SIZE, ALIGNED_SIZE, 3):
            raise ValueError(f"embed expects Nx112x112x3 RGB faces, got {arr.shape}")
        if not len(arr):
            return np.zeros((0, 128), np.float32)
        x = (arr.astype(np.float32) - 127.5) / 128.0
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        (emb,) = self.session.run(None, {self.input_name: x})
        emb = np.asarray(emb, np.float32)
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norm, 1e-12)


def featureless_reference(face112: np.ndarray, sigma: float = IDENTIFIABLE_BLUR_SIGMA) -> np.ndarray:
    """The aligned face with its identity blurred away (the identifiability gate's reference)."""
    return cv2.GaussianBlur(face112, (0, 0), sigmaX=sigma)


def embed(recognizer: Recognizer, faces112: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    return recognizer.embed(faces112)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


# --------------------------------------------------------------------------- expression


def landmark_crop_matrix(face: Face, out_size: int = 192, scale: float = LANDMARK_CROP_SCALE) -> np.ndarray:
    """2x3 affine: image px -> a square crop around the detection (side = scale x the box's
    longer side, centred on the box, rotated so the eyes are level), ``out_size`` px."""
    cx = (face.box[0] + face.box[2]) / 2
    cy = (face.box[1] + face.box[3]) / 2
    side = scale * face.size
    dx, dy = face.kps[1] - face.kps[0]
    angle = math.atan2(float(dy), float(dx))
    c, s = math.cos(angle), math.sin(angle)
    k = out_size / side
    a = np.array([[c, s], [-s, c]], np.float64) * k
    t = np.array([out_size / 2, out_size / 2]) - a @ np.array([cx, cy])
    return np.concatenate([a, t[:, None]], axis=1)


def crop_landmarks(session, rgb: np.ndarray, matrix: np.ndarray, out_size: int = 192) -> tuple[np.ndarray, float]:
    """468 face-mesh points (468x2, image px) and presence for the crop ``matrix`` of ``rgb``,
    using the pipeline's landmark runner (``pipeline.onnx_models.run_face_landmarks``)."""
    from pipeline.onnx_models import run_face_landmarks

    crop = cv2.warpAffine(rgb, matrix, (out_size, out_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    pts, presence = run_face_landmarks(session, crop)
    inv = cv2.invertAffineTransform(matrix)
    xy = pts[:, :2].astype(np.float64) @ inv[:, :2].T + inv[:, 2]
    return xy.astype(np.float32), presence


def normalised_point_error(pred: np.ndarray, ref: np.ndarray, inter_ocular: float) -> float:
    """Mean Euclidean distance between corresponding points, divided by the inter-ocular distance."""
    d = np.linalg.norm(np.asarray(pred, np.float64)[:, :2] - np.asarray(ref, np.float64)[:, :2], axis=1)
    return float(d.mean() / inter_ocular) if inter_ocular > 0 else float("nan")


# --------------------------------------------------------------------------- data sets


@dataclass(frozen=True)
class AnnotatedImage:
    path: Path
    boxes: np.ndarray  # Nx4 (x0, y0, x1, y1)


def load_dlib_boxes(eval_dir: Path) -> list[AnnotatedImage]:
    """The hand-made face boxes of ``images/dlib_faces`` (training.xml + testing.xml)."""
    folder = Path(eval_dir) / DLIB_DIR
    images: list[AnnotatedImage] = []
    for name in DLIB_XMLS:
        xml = folder / name
        if not xml.is_file():
            raise EvalMediaMissing(f"{xml} is missing")
        root = ET.parse(xml).getroot()
        for image in root.iter("image"):
            boxes = []
            for b in image.iter("box"):
                if b.get("ignore") == "1":
                    continue
                top, left = float(b.get("top")), float(b.get("left"))
                bw, bh = float(b.get("width")), float(b.get("height"))
                boxes.append([left, top, left + bw, top + bh])
            images.append(AnnotatedImage(folder / image.get("file"), np.asarray(boxes, np.float32).reshape(-1, 4)))
    return images


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise EvalMediaMissing(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_pairs(eval_dir: Path) -> list[tuple[str, str, bool]]:
    """``images/deepface/master.csv``: (file_x, file_y, same person)."""
    import csv

    path = Path(eval_dir) / "images" / "deepface" / "master.csv"
    if not path.is_file():
        raise EvalMediaMissing(f"{path} is missing")
    with open(path, newline="") as f:
        return [(r["file_x"], r["file_y"], r["Decision"].strip().lower() == "yes") for r in csv.DictReader(f)]


# --------------------------------------------------------------------------- statistics


def percentiles(values: Iterable[float], qs: Sequence[float] = (50, 95)) -> dict[str, float | int | None]:
    """{"n", "mean", "p50", "p95", "max"} of the finite values (None where there are none)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    out: dict[str, float | int | None] = {"n": int(v.size)}
    if not v.size:
        out.update({"mean": None, **{f"p{int(q)}": None for q in qs}, "max": None})
        return out
    out["mean"] = round(float(v.mean()), 4)
    for q in qs:
        out[f"p{int(q)}"] = round(float(np.percentile(v, q)), 4)
    out["max"] = round(float(v.max()), 4)
    return out
