"""Offline ONNX models of the masking pipeline: integrity-checked loading and thin runners.

The files live in ``pipeline/models`` and are listed, with their sha256, origin, licence
and I/O, in ``pipeline/models/MANIFEST.json`` (made by ``trt_engines/export_models.py``).
Nothing is fetched at run time, and only ``onnxruntime`` and ``numpy`` are needed.

Pre/post-processing (mirrors MediaPipe 0.10.21's graphs; checked against MediaPipe's own
outputs by ``tests/pipeline/test_model_port.py``):

``face_landmark.onnx`` (MediaPipe face mesh, 468 points)
    input ``input_1``: float32 NHWC 1x192x192x3, **RGB in [0, 1]** (uint8 / 255), the face
    crop resized to 192x192 (MediaPipe crops the detection box scaled 1.5, squared and
    rotated upright). Outputs ``conv2d_21`` 1x1x1x1404 = 468 x (x, y, z) in pixels of the
    192x192 crop (x right, y down, z relative depth at the same scale, smaller = nearer),
    and ``conv2d_31`` 1x1x1x1 = face presence *logit*; score = sigmoid(logit), MediaPipe
    drops the face when score < 0.5.

``selfie_segmentation.onnx`` (1x256x256x3) / ``selfie_segmentation_landscape.onnx``
(1x144x256x3, height 144, width 256)
    input ``input_1``: float32 NHWC, **RGB in [0, 1]**, the whole frame resized without
    keeping the aspect ratio. Output 1xHxWx1: person probability in [0, 1] (the sigmoid is
    inside the model).

``face_detection_yunet_2023mar.onnx`` (YuNet; ``_dynamic`` variant: any H, W multiple of 32)
    input ``input``: float32 NCHW, **BGR 0-255** unnormalised. See MANIFEST.json for the
    output decoding.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime

MODELS_DIR = Path(__file__).resolve().parent / "models"
MANIFEST_NAME = "MANIFEST.json"

FACE_LANDMARK = "face_landmark"
SELFIE_SEGMENTATION = "selfie_segmentation"
SELFIE_SEGMENTATION_LANDSCAPE = "selfie_segmentation_landscape"
FACE_DETECTION_YUNET = "face_detection_yunet_2023mar"
FACE_DETECTION_YUNET_DYNAMIC = "face_detection_yunet_2023mar_dynamic"

NUM_FACE_LANDMARKS = 468
LANDMARK_INPUT_SIZE = 192

__all__ = [
    "MODELS_DIR",
    "ModelIntegrityError",
    "load_manifest",
    "model_path",
    "verify_model",
    "load_session",
    "providers_for",
    "tensorrt_provider_options",
    "run_face_landmarks",
    "run_selfie_segmentation",
]


class ModelIntegrityError(RuntimeError):
    """A model file is missing, unlisted in MANIFEST.json, or not the file it lists."""


_verified: dict[tuple[str, int, int], str] = {}
_verified_lock = threading.Lock()


def _file_name(name: str) -> str:
    return name if name.endswith((".onnx", ".json")) else f"{name}.onnx"


def load_manifest(models_dir: Path | str | None = None) -> dict[str, Any]:
    """``MANIFEST.json`` of ``models_dir`` (default: ``pipeline/models``)."""
    directory = Path(models_dir) if models_dir is not None else MODELS_DIR
    path = directory / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelIntegrityError(
            f"{path} is missing: the model folder must carry the manifest written by "
            "`python -m trt_engines.export_models`"
        ) from None
    except json.JSONDecodeError as exc:
        raise ModelIntegrityError(f"{path} is not valid JSON: {exc}") from None


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_path(name: str, models_dir: Path | str | None = None) -> Path:
    """Path of ``name`` (with or without ``.onnx``), without checking it."""
    directory = Path(models_dir) if models_dir is not None else MODELS_DIR
    return directory / _file_name(name)


def verify_model(name: str, models_dir: Path | str | None = None) -> Path:
    """Check the file's sha256 against MANIFEST.json and return its path.

    The hash is computed once per file (keyed on path, size and mtime); later calls are
    free. Raises :class:`ModelIntegrityError` with the reason on any mismatch.
    """
    directory = Path(models_dir) if models_dir is not None else MODELS_DIR
    fname = _file_name(name)
    path = directory / fname
    manifest = load_manifest(directory)
    entry = manifest.get("files", {}).get(fname)
    if entry is None:
        known = sorted(k for k, v in manifest.get("files", {}).items() if v.get("kind") == "onnx")
        raise ModelIntegrityError(f"{fname} is not listed in {directory / MANIFEST_NAME} (listed: {known})")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelIntegrityError(
            f"model file {path} is missing; re-create it with `python -m trt_engines.export_models`"
        ) from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    want = entry["sha256"]
    with _verified_lock:
        if _verified.get(key) == want:
            return path
    if st.st_size != entry.get("size", st.st_size):
        raise ModelIntegrityError(
            f"{path}: size {st.st_size} != {entry['size']} in MANIFEST.json (corrupt or replaced file)"
        )
    got = _sha256_file(path)
    if got != want:
        raise ModelIntegrityError(
            f"{path}: sha256 {got} != {want} in MANIFEST.json (corrupt or replaced file); "
            "restore it from the repository or re-export it"
        )
    with _verified_lock:
        _verified[key] = want
    return path


# pipeline.execution_provider -> the onnxruntime providers, in order of preference; neither
# GPU entry has ever run on this project's machines (none has had a GPU)
EXECUTION_PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],  # onnxruntime-gpu
    # onnxruntime-gpu and TensorRT: TensorRT engines built from the same ONNX files, nodes
    # TensorRT lacks on CUDA (tensorrt_provider_options: the engine cache, the detector's shapes)
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_PROVIDER_NEEDS = {
    "CUDAExecutionProvider": "install onnxruntime-gpu on a machine with a CUDA GPU",
    "TensorrtExecutionProvider": "install onnxruntime-gpu and TensorRT (the `tensorrt` wheel) on a machine with a CUDA GPU",
}

# TensorRT engines are built on a session's first start (minutes) and kept here for the next
TRT_CACHE_DIR = Path(__file__).resolve().parents[1] / "trt_engines" / "cache"
# The optimisation profile for a model input with symbolic sides (the dynamic YuNet: every
# partial scan is a crop of its own size, a multiple of 32): one engine for any size from the
# smallest crop to the detector's input for a 4K frame (3840x2160 at min_scale 0.5: 1920x1088),
# tuned for 1280x720's 640x352. A larger input is outside it: onnxruntime fails the run or
# rebuilds the engine (never run here, so not known which); the masker covers what fails or is late.
TRT_PROFILE_HW = {"min": (32, 32), "opt": (352, 640), "max": (1088, 1920)}


def providers_for(execution_provider: str) -> list[str]:
    """The onnxruntime providers for ``pipeline.execution_provider``. One this onnxruntime
    does not offer is refused here, with what it does offer, rather than left to fall back
    to the CPU unnoticed."""
    import onnxruntime as ort

    if execution_provider not in EXECUTION_PROVIDERS:
        raise ValueError(f"pipeline.execution_provider must be one of {', '.join(EXECUTION_PROVIDERS)}, not {execution_provider!r}")
    wanted = EXECUTION_PROVIDERS[execution_provider]
    have = ort.get_available_providers()
    if wanted[0] not in have:
        raise ValueError(
            f"pipeline.execution_provider {execution_provider!r} needs onnxruntime's {wanted[0]}, which this "
            f"installation lacks (it has {', '.join(have)}): {_PROVIDER_NEEDS[wanted[0]]}, or use cpu"
        )
    return list(wanted)


def tensorrt_provider_options(
    name: str, models_dir: Path | str | None = None, cache_dir: Path | str | None = None
) -> dict[str, str]:
    """onnxruntime's TensorRT options for model ``name``: engines (and TensorRT's timing
    cache) kept in ``cache_dir`` (default ``HIKARIEDGE_TRT_CACHE`` or ``trt_engines/cache``),
    FP32 as the port was proven in (``tests/pipeline/test_model_port.py``), and an explicit
    profile for each input whose sides are symbolic in MANIFEST.json, so the detector's
    changing crop sizes reuse one engine instead of rebuilding it. Pure: nothing is loaded."""
    cache = Path(cache_dir or os.environ.get("HIKARIEDGE_TRT_CACHE") or TRT_CACHE_DIR)
    options = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": "False",
    }
    entry = load_manifest(models_dir).get("files", {}).get(_file_name(name), {})
    profiles: dict[str, list[str]] = {"min": [], "opt": [], "max": []}
    for spec in entry.get("io", {}).get("inputs", []):
        shape = spec["shape"]
        if all(isinstance(d, int) for d in shape):
            continue
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[:2]):
            raise ValueError(f"{name}: no TensorRT profile for input {spec['name']} of shape {shape} (only NCHW with symbolic H, W)")
        for which, (ph, pw) in TRT_PROFILE_HW.items():
            profiles[which].append(f"{spec['name']}:{shape[0]}x{shape[1]}x{ph}x{pw}")
    for which, shapes in profiles.items():
        if shapes:
            options[f"trt_profile_{which}_shapes"] = ",".join(shapes)
    return options


def session_providers(providers: list[str], name: str, models_dir: Path | str | None = None) -> list[Any]:
    """``providers`` as ``onnxruntime.InferenceSession`` takes them, with the TensorRT
    provider's options for this model attached (the others need none)."""
    return [
        (p, tensorrt_provider_options(name, models_dir)) if p == "TensorrtExecutionProvider" else p
        for p in providers
    ]


def load_session(
    name: str,
    *,
    models_dir: Path | str | None = None,
    intra_op_num_threads: int | None = None,
    inter_op_num_threads: int = 1,
    providers: list[Any] | None = None,
    allow_spinning: bool = False,
) -> onnxruntime.InferenceSession:
    """An onnxruntime session for a verified model file.

    One intra-op thread by default (``HIKARIEDGE_ORT_THREADS`` overrides, and so does the
    argument): on the 2-core target, two threads made p95 latency ~10x worse under load.
    Thread-pool spinning is off so idle sessions do not burn CPU.
    """
    import onnxruntime as ort

    path = verify_model(name, models_dir)
    if intra_op_num_threads is None:
        intra_op_num_threads = int(os.environ.get("HIKARIEDGE_ORT_THREADS", "1"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_num_threads
    opts.inter_op_num_threads = inter_op_num_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    wanted = session_providers(providers or ["CPUExecutionProvider"], name, models_dir)
    first = wanted[0] if isinstance(wanted[0], str) else wanted[0][0]
    if first == "TensorrtExecutionProvider":
        Path(wanted[0][1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
    session = ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
    if session.get_providers()[0] != first:  # onnxruntime falls back quietly when a GPU provider fails to start
        raise RuntimeError(f"{name}: onnxruntime could not start {first} (it runs on {session.get_providers()[0]})")
    return session


def _rgb_to_input(rgb: np.ndarray, hw: tuple[int, int], what: str) -> np.ndarray:
    """HxWx3 RGB (uint8 0-255, or float in [0, 1]) -> float32 1xHxWx3 in [0, 1]."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{what}: expected an HxWx3 RGB image, got shape {rgb.shape}")
    if rgb.shape[:2] != hw:
        raise ValueError(f"{what}: expected {hw[0]}x{hw[1]} (HxW) input, got {rgb.shape[0]}x{rgb.shape[1]}; resize first")
    if rgb.dtype == np.uint8:
        x = rgb.astype(np.float32)
        x *= np.float32(1.0 / 255.0)
    elif np.issubdtype(rgb.dtype, np.floating):
        x = rgb.astype(np.float32, copy=False)
        if x.size and float(x.max()) > 1.0 + 1e-3:
            raise ValueError(f"{what}: float input must be in [0, 1] (got max {float(x.max()):.1f}); pass uint8 for 0-255")
    else:
        raise ValueError(f"{what}: unsupported dtype {rgb.dtype}; use uint8 RGB")
    return np.ascontiguousarray(x[None])


def _input_hw(session: onnxruntime.InferenceSession) -> tuple[int, int]:
    shape = session.get_inputs()[0].shape  # NHWC
    return int(shape[1]), int(shape[2])


def run_face_landmarks(
    session: onnxruntime.InferenceSession, crop_rgb_192: np.ndarray
) -> tuple[np.ndarray, float]:
    """468 face-mesh landmarks for one 192x192 RGB face crop.

    ``crop_rgb_192``: HxWx3 RGB, uint8 (0-255) or float in [0, 1]. Returns
    ``(landmarks, face_presence_score)``: ``landmarks`` float32 (468, 3) as x, y, z in
    pixels of the crop; the score is sigmoid of the model's presence logit.
    """
    x = _rgb_to_input(crop_rgb_192, (LANDMARK_INPUT_SIZE, LANDMARK_INPUT_SIZE), "run_face_landmarks")
    landmarks, presence = session.run(None, {session.get_inputs()[0].name: x})
    logit = float(np.asarray(presence).reshape(-1)[0])
    score = float(1.0 / (1.0 + np.exp(-logit))) if logit > -80.0 else 0.0
    return np.asarray(landmarks, dtype=np.float32).reshape(NUM_FACE_LANDMARKS, 3), score


def run_selfie_segmentation(session: onnxruntime.InferenceSession, rgb: np.ndarray) -> np.ndarray:
    """Person probability mask (float32 HxW in [0, 1]) at the model's input size.

    ``rgb``: HxWx3 RGB already resized to the model input (256x256 for
    ``selfie_segmentation``, 144x256 for ``selfie_segmentation_landscape``), uint8 or
    float in [0, 1].
    """
    x = _rgb_to_input(rgb, _input_hw(session), "run_selfie_segmentation")
    (mask,) = session.run(None, {session.get_inputs()[0].name: x})
    return np.asarray(mask, dtype=np.float32)[0, :, :, 0]
