"""Masking evaluation and benchmark on real faces (``../shared/eval``): speed, recall, leaks.

Runs a FrameProcessor (the real masker by default, or a stand-in) over the evaluation
clips and photos, and measures, against referees that are not the pipeline's own code:

1. speed: per-stage ms (``processor.last_timings``) and wall ms around ``process()``,
   p50/p95, at each clip's own size and with the same frames fitted into 1280x720 (aspect kept);
2. detection recall of the pipeline's detector on the hand-boxed dlib photos (IoU >= 0.5),
   and whether the masked photos leave any annotated face unmasked;
3. unmasked faces on the clips: an independent full-resolution YuNet pass on the INPUT
   finds the faces, and each is judged on the OUTPUT (definition in the JSON);
4. identity leakage: MobileFaceNet cosine between the output and input face, aligned with
   the same transform (the input face's keypoints); counted on "identifiable" input faces
   (the recognizer tells them from their own blurred copy), all faces kept as *_ungated;
5. expression tracking: face-mesh landmarks on the output vs the input face, same crop;
6. temporal stability: frame-to-frame change inside the face box, output vs input;
7. a before/after contact sheet.

    .venv/bin/python bench/mask_eval.py                       # the real masker, all clips
    .venv/bin/python bench/mask_eval.py --quick               # 2 clips x 30 frames
    .venv/bin/python bench/mask_eval.py --judge-size 1280x720 # judge the clips as a 720p stream shows them
    .venv/bin/python bench/mask_eval.py --view-size 640x360   # masked at their own size, judged as a 360p rendition
    .venv/bin/python bench/mask_eval.py --view-side 360       # the same, each clip scaled to a shorter side of 360
    .venv/bin/python bench/mask_eval.py --processor identity-standin --sheet none

The evaluation media is read in place (``--eval-dir``, default ``<repo>/../shared/eval``)
and never copied; without it the script says so and exits 0.
"""

from __future__ import annotations

import os

os.environ.setdefault("HIKARIEDGE_ORT_THREADS", "1")  # before anything loads onnxruntime sessions

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from collections import Counter  # noqa: E402
from fractions import Fraction  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Iterator  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench import eval_lib as L  # noqa: E402
from pipeline.lookahead import Lookahead  # noqa: E402

DEFAULT_OUT = "bench/out/mask_eval.json"
DEFAULT_SHEET = "bench/out/mask_contact_sheet.png"  # before | after: real faces, stays out of git
DEFAULT_DOCS_SHEET = "docs/mask_contact_sheet.png"  # output only: no unmasked eval face enters the repository
DEFAULT_MAX_FRAMES = 90
QUICK_CLIPS = ("Twitch1.mp4", "lp_d12.mp4")
QUICK_FRAMES = 30
BENCH_SIZE = (1280, 720)
WARMUP_FRAMES = 1  # left out of the timing statistics (lazy model loading, first allocations)
IMAGE_PROCESSED = 2  # each photo is offered as a still stream until the masker has really run on it this often
IMAGE_MAX_OFFERS = 8
IMAGE_CATCH_UP_S = 2.0  # after a fallback, wait (at most this long) for the late frame to finish before the next offer


def _feature_points() -> np.ndarray:
    """Face-mesh indices of the eyes, brows and lips: the points an expression moves."""
    from pipeline.persona import face_mesh_topology

    return face_mesh_topology().points("left_eye", "right_eye", "left_eyebrow", "right_eyebrow", "lips_outer", "lips_inner")


_FEATURES = _feature_points()

# frame-level fallbacks of pipeline.masker.FaceMasker (events it counts when it did not mask the frame itself)
FALLBACK_EVENTS = ("deadline", "error", "no_detection_yet")
IMAGE_TIME_BASE = Fraction(1, 30)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".gif")
SHEET_PREFERENCE = (
    "Twitch1", "crowd_1080p", "lp_d12", "lp_s18", "Obama_speaking", "WDA_KatieHill_000",
    "vr_2", "elon-musk-smoke", "lp_d13", "lp_s20", "WDA_AlexandriaOcasioCortez_000", "vr_1",
)
SCHEMA = "hikariedge.mask_eval/1"

DEFINITIONS = {
    "independent_detector": (
        "shared/eval models/face_detection_yunet_2023mar.onnx run by OpenCV DNN (not onnxruntime) on the INPUT "
        "frame at full resolution, padded bottom/right to a multiple of 32, own decoding, score >= 0.6, NMS IoU 0.3"
    ),
    "alignment": (
        "similarity transform (Umeyama) from the INPUT face's 5 YuNet keypoints to the ArcFace 112x112 template; "
        "the same transform crops the OUTPUT frame"
    ),
    "cosine": (
        "MobileFaceNet (shared/eval models/mobilefacenet_foamliu_vface.onnx) on RGB (x-127.5)/128, cosine of the "
        "L2-normalised embeddings of the aligned output face and the aligned input face"
    ),
    "identifiable": (
        f"cosine(input face, the same aligned input face Gaussian-blurred with sigma {L.IDENTIFIABLE_BLUR_SIGMA} px) "
        f"< {L.LEAK_COSINE}: the recognizer sees identity in the input face. Profiles, backs of heads, tiny or "
        "motion-blurred faces and false detections embed like any blob, so any masked output matches them; leak "
        "rates and 'cosine' are over identifiable faces only ('*_ungated' keeps every face)"
    ),
    "leak": f"identifiable AND cosine >= {L.LEAK_COSINE}",
    "cosine_stream_aligned": (
        "the same recognizer with the output face aligned as someone holding only the stream would align it: the "
        "independent detector run on the OUTPUT frame, its face with the highest IoU (>= "
        f"{L.STREAM_MATCH_IOU}) with the input face, aligned on its own keypoints, against the input face aligned "
        "on the input's. 'cosine' aligns both on the input's keypoints, so a persona that lags the face scores lower "
        "there than here. 'output_face_not_found' counts input faces with no such output face (no cosine then)"
    ),
    "leak_stream_aligned": f"identifiable AND cosine_stream_aligned >= {L.LEAK_COSINE}",
    "stranger_cosine": (
        "the recognizer's floor on the same footage: cosine between the aligned INPUT faces of two different "
        "people in the same frame (both identifiable, both >= 40 px); 'share_at_leak' is the share of such pairs at "
        f"or above {L.LEAK_COSINE}. A masked face that leaks no more often than two strangers do is as far from the "
        "creator as another person is, by this recognizer at this size"
    ),
    "stranger_cosine_under_40px": (
        "the same floor for small faces: pairs of different people's input faces in one frame, both identifiable "
        "and both under 40 px (where 'stranger_cosine' has none, e.g. a crowd viewed at 360p). Compare it with "
        "'leak_rate_faces_under40px': the recognizer matches small strangers more often than large ones"
    ),
    "unchanged": f"mean |output - input| over the input face box (0-255, all channels) < {L.UNCHANGED_MEAN_ABS_DIFF}",
    "unmasked_face": "leak OR unchanged",
    "unmasked_frame_share": "frames with at least one unmasked face / frames where the independent detector found a face",
    "expression_error": (
        "pipeline.onnx_models.run_face_landmarks on the same crop of input and output (square, side 1.5 x the input "
        "detection's longer side, centred on it, rotated to level the eyes; 192x192): mean distance of the 468 points "
        "(image px) / inter-ocular distance (between the input detection's two eye keypoints); computed where both "
        f"crops' presence >= {L.LANDMARK_PRESENCE}; 'output_face_lost' counts faces whose input crop passes and whose "
        "output crop does not (the face mesh no longer finds a face there: covered, blurred, or a broken swap)"
    ),
    "expression_error_features": (
        "the same over the eyes, brows and lips only (their mesh loops): what expression moves. The all-point figure "
        "also counts the face outline, which the swap draws deliberately bigger than the live one (pipeline.face_grow)"
    ),
    "flicker_ratio": (
        "per face and consecutive frame pair: mean |out_t - out_t-1| / mean |in_t - in_t-1| inside the input face box "
        "at t (denominator floored at 0.5); ~1 = as stable as the input, >1 = the mask flickers more than the face moves, <1 = the output changes less "
        "than the input (e.g. a static cover or blur)"
    ),
    "timing": (
        f"ms per frame; 'wall' is measured around processor.process(), the stages come from processor.last_timings "
        "('n' = frames where that stage ran); frames are offered no faster than the clip's frame rate; only frames "
        "the processor really ran count ('frames'): a frame answered by a fallback (its deadline/error event counted, "
        "or last_timings not refreshed) goes to 'fallback_frames' by reason and into 'wall_ms_all_frames' only; "
        f"the first {WARMUP_FRAMES} frame(s) of each clip are left out"
    ),
    "recall": "ground-truth boxes matched one-to-one (greedy, highest IoU first) by a detection with IoU >= 0.5",
    "pipeline_face_recall": (
        "the same matching against the masker's own face boxes once it has run on the photo: each tracked face's "
        "468-point mesh box (the detector's box refined by the landmark model; what the swap is drawn on). "
        "'recall' keeps the raw detector boxes"
    ),
}


# --------------------------------------------------------------------------- stand-in processors


def _copy_timing_attrs(src: av.VideoFrame, dst: av.VideoFrame) -> av.VideoFrame:
    dst.pts = src.pts
    if src.time_base is not None:
        dst.time_base = src.time_base
    return dst


class IdentityStandin:
    """STAND-IN, not the product: passes every frame through untouched (everything leaks)."""

    name = "identity-standin"

    def __init__(self) -> None:
        self.last_timings: dict[str, float] = {}

    def process(self, frame: av.VideoFrame) -> av.VideoFrame:
        t0 = time.perf_counter()
        self.last_timings = {"total": (time.perf_counter() - t0) * 1000}
        return frame

    def close(self) -> None:
        pass


class BlurStandin:
    """STAND-IN, not the product: a strong Gaussian blur of the whole frame (nothing leaks).

    Blurred at 1/8 scale with sigma 3 and scaled back, about a sigma of 24 px at full size.
    """

    name = "blur-standin"

    def __init__(self) -> None:
        self.last_timings: dict[str, float] = {}

    def process(self, frame: av.VideoFrame) -> av.VideoFrame:
        t0 = time.perf_counter()
        rgb = frame.to_ndarray(format="rgb24")
        t1 = time.perf_counter()
        h, w = rgb.shape[:2]
        small = cv2.resize(rgb, (max(1, w // 8), max(1, h // 8)), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigmaX=3.0)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        t2 = time.perf_counter()
        result = av.VideoFrame.from_ndarray(out, format="rgb24").reformat(format=frame.format.name)
        _copy_timing_attrs(frame, result)
        t3 = time.perf_counter()
        self.last_timings = {"cover": (t2 - t1) * 1000, "convert": (t1 - t0 + t3 - t2) * 1000, "total": (t3 - t0) * 1000}
        return result

    def close(self) -> None:
        pass


STANDINS: dict[str, type] = {"identity-standin": IdentityStandin, "blur-standin": BlurStandin}
PROCESSORS = ("mask", *STANDINS)


def resolve_persona(persona_id: str | None, mode: str) -> tuple[Any, str | None]:
    """(persona, its id) for persona mode: a builtin from ``pipeline.procedural`` (default: the
    first one); (None, None) in other modes or when pipeline.procedural is not there."""
    if mode != "persona" and not persona_id:
        return None, None
    try:
        from pipeline import procedural
    except ImportError:
        print(f"note: pipeline.procedural is not available; persona=None (--persona {persona_id} ignored)", file=sys.stderr)
        return None, None
    ids = [b.id for b in getattr(procedural, "BUILTIN_PERSONAS", ())]
    persona_id = persona_id or (ids[0] if ids else None)
    style, _, seed = (persona_id or "").partition(":")
    if seed.isdigit() and style in procedural.STYLES:  # a procedural one, STYLE:SEED
        return procedural.render_procedural(int(seed), style), persona_id
    persona = procedural.builtin_persona(persona_id) if persona_id else None
    if persona is None:
        raise SystemExit(f"no builtin persona {persona_id!r} (builtins: {', '.join(ids) or 'none'}; or STYLE:SEED)")
    return persona, persona_id


def processor_factory(kind: str, config: Any, mode: str, persona: Any = None, seed: int | None = None) -> Callable[[], Any]:
    """A zero-argument callable making a fresh processor (one per clip/photo: one 'stream' each).

    ``seed``: the masker's session seed (which throwaway personas anonymize draws) for the
    first processor, +1 for each next one, so a run can be repeated exactly; None = random,
    as a live session does.
    """
    if kind in STANDINS:
        return STANDINS[kind]
    if kind != "mask":
        raise ValueError(f"unknown processor {kind!r} (one of {PROCESSORS})")
    try:
        import pipeline.masker  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"the real masker is not importable yet (pipeline.masker: {exc}); use --processor identity-standin|blur-standin") from exc
    from pipeline.factory import build_processor

    made = itertools.count()

    def make() -> Any:
        n = next(made)
        return build_processor(config, mode, persona, **({} if seed is None else {"seed": seed + n}))

    try:  # fail early and readably (e.g. a module the mode needs is not there yet)
        make().close()
    except ImportError as exc:
        raise SystemExit(f"cannot build the masker for mode {mode!r}: {type(exc).__name__}: {exc}") from exc
    return make


# --------------------------------------------------------------------------- measurement


@dataclass
class Tools:
    """The referees: independent detector, recognizer, face-mesh session."""

    detector: L.IndependentYuNet
    recognizer: L.Recognizer
    landmarks: Any

    @classmethod
    def load(cls, eval_dir: Path) -> Tools:
        from pipeline.onnx_models import FACE_LANDMARK, load_session

        return cls(L.IndependentYuNet(eval_dir), L.Recognizer(eval_dir), load_session(FACE_LANDMARK))


@dataclass
class FaceResult:
    box: list[float]
    size: float
    score: float
    cosine: float  # output vs input face
    self_blur_cosine: float  # input vs its own blurred version (identifiability gate)
    box_diff: float
    expression_error: float | None
    feature_error: float | None  # the same over the eyes, brows and lips only
    input_presence: float
    output_presence: float
    stream_cosine: float | None = None  # DEFINITIONS['cosine_stream_aligned']; None: no face found there

    @property
    def identifiable(self) -> bool:
        return self.self_blur_cosine < L.LEAK_COSINE

    @property
    def leak(self) -> bool:
        return self.identifiable and self.cosine >= L.LEAK_COSINE

    @property
    def stream_leak(self) -> bool:
        return self.identifiable and self.stream_cosine is not None and self.stream_cosine >= L.LEAK_COSINE

    @property
    def unchanged(self) -> bool:
        return bool(self.box_diff < L.UNCHANGED_MEAN_ABS_DIFF)

    @property
    def unmasked(self) -> bool:
        return self.leak or self.unchanged


def identity_cosines(
    in_rgb: np.ndarray, out_rgb: np.ndarray, kps: list[np.ndarray], recognizer: L.Recognizer
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(output-vs-input cosine, input-vs-blurred-input cosine, the input embeddings) per face,
    aligned by the input keypoints."""
    mats = [L.alignment_matrix(k) for k in kps]
    a_in = [L.align_face(in_rgb, matrix=m) for m in mats]
    a_out = [L.align_face(out_rgb, matrix=m) for m in mats]
    a_ref = [L.featureless_reference(a) for a in a_in]
    emb = recognizer.embed(np.stack(a_in + a_out + a_ref))
    n = len(mats)
    e_in, e_out, e_ref = emb[:n], emb[n : 2 * n], emb[2 * n :]
    return (e_in * e_out).sum(1), (e_in * e_ref).sum(1), e_in


def stream_aligned_cosines(
    out_rgb: np.ndarray, faces: list[L.Face], e_in: np.ndarray, tools: Tools
) -> list[float | None]:
    """Per input face: cosine to the face the independent detector finds at its place in the
    OUTPUT, aligned on that face's own keypoints (DEFINITIONS['cosine_stream_aligned'])."""
    out: list[float | None] = [None] * len(faces)
    found = tools.detector.detect(out_rgb)
    if not found:
        return out
    overlap = L.iou_matrix(np.array([f.box for f in faces]), np.array([g.box for g in found]))
    pairs = [(i, int(np.argmax(row))) for i, row in enumerate(overlap) if row.max() >= L.STREAM_MATCH_IOU]
    if pairs:
        crops = [L.align_face(out_rgb, matrix=L.alignment_matrix(found[k].kps)) for _, k in pairs]
        for (i, _), e in zip(pairs, tools.recognizer.embed(np.stack(crops))):
            out[i] = float(e_in[i] @ e)
    return out


def judge_faces(
    in_rgb: np.ndarray, out_rgb: np.ndarray, faces: list[L.Face], tools: Tools, *, expression: bool = True,
    strangers: list[float] | None = None, small_strangers: list[float] | None = None,
) -> list[FaceResult]:
    """For each input face: identity cosine, box change, landmark error of the output vs the input.

    ``strangers``: if given, gets the cosine of every pair of different input faces in the
    frame (both identifiable and >= 40 px): the recognizer's floor (DEFINITIONS['stranger_cosine']);
    ``small_strangers`` the same for pairs both under 40 px.
    """
    if not faces:
        return []
    cos, self_blur, e_in = identity_cosines(in_rgb, out_rgb, [f.kps for f in faces], tools.recognizer)
    stream = stream_aligned_cosines(out_rgb, faces, e_in, tools)
    results = []
    for i, f in enumerate(faces):
        diff = L.box_mean_abs_diff(in_rgb, out_rgb, f.box)
        err = ferr = None
        pin, pout = float("nan"), float("nan")
        if expression:
            m = L.landmark_crop_matrix(f)
            p_in, pin = L.crop_landmarks(tools.landmarks, in_rgb, m)
            p_out, pout = L.crop_landmarks(tools.landmarks, out_rgb, m)
            if pin >= L.LANDMARK_PRESENCE and pout >= L.LANDMARK_PRESENCE:
                err = L.normalised_point_error(p_out, p_in, f.inter_ocular)
                ferr = L.normalised_point_error(p_out[_FEATURES], p_in[_FEATURES], f.inter_ocular)
        results.append(
            FaceResult(
                box=[round(float(v), 1) for v in f.box], size=round(f.size, 1), score=round(f.score, 3),
                cosine=float(cos[i]), self_blur_cosine=float(self_blur[i]), box_diff=diff,
                expression_error=err, feature_error=ferr, input_presence=pin, output_presence=pout,
                stream_cosine=stream[i],
            )
        )
    for pairs, large in ((strangers, True), (small_strangers, False)):
        if pairs is not None:
            ok = [i for i, r in enumerate(results) if r.identifiable and (r.size >= 40) == large]
            pairs.extend(float(e_in[a] @ e_in[b]) for k, a in enumerate(ok) for b in ok[k + 1 :])
    return results


def flicker_ratios(prev_in: np.ndarray, in_rgb: np.ndarray, prev_out: np.ndarray, out_rgb: np.ndarray, faces: list[L.Face]) -> list[float]:
    """Output/input frame-to-frame change inside each face box (see DEFINITIONS['flicker_ratio'])."""
    ratios = []
    for f in faces:
        d_in = L.box_mean_abs_diff(prev_in, in_rgb, f.box)
        d_out = L.box_mean_abs_diff(prev_out, out_rgb, f.box)
        if np.isfinite(d_in) and np.isfinite(d_out):
            ratios.append(d_out / max(d_in, 0.5))
    return ratios


class TimingStats:
    """Wall ms around process() and per-stage ms (from last_timings) of the frames the
    processor really ran; frames answered by a fallback (deadline, busy, error) are counted
    by reason and kept out of the stage statistics (their last_timings are stale)."""

    def __init__(self) -> None:
        self.stages: dict[str, list[float]] = {}
        self.wall: list[float] = []  # processed frames
        self.wall_all: list[float] = []  # every frame offered
        self.fallbacks: Counter[str] = Counter()

    def add(self, wall_ms: float, timings: dict[str, float] | None, fallback: str | None = None) -> None:
        self.wall_all.append(wall_ms)
        if fallback is not None:
            self.fallbacks[fallback] += 1
            return
        self.wall.append(wall_ms)
        for k, v in (timings or {}).items():
            try:
                self.stages.setdefault(str(k), []).append(float(v))
            except (TypeError, ValueError):
                continue

    def extend(self, other: TimingStats) -> None:
        self.wall.extend(other.wall)
        self.wall_all.extend(other.wall_all)
        self.fallbacks.update(other.fallbacks)
        for k, v in other.stages.items():
            self.stages.setdefault(k, []).extend(v)

    def summary(self) -> dict[str, Any]:
        return {
            "frames": len(self.wall),
            "frames_offered": len(self.wall_all),
            "fallback_frames": dict(sorted(self.fallbacks.items())),
            "wall_ms": L.percentiles(self.wall),
            "wall_ms_all_frames": L.percentiles(self.wall_all),
            "stages_ms": {k: L.percentiles(v) for k, v in sorted(self.stages.items())},
        }


def clip_fps(path: Path) -> float:
    """The clip's frame rate (30 when the container does not say)."""
    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
            return float(rate) if rate and float(rate) > 0 else 30.0
    except av.error.FFmpegError:
        return 30.0


class Pacer:
    """Offers frames no faster than ``fps`` (as a live source would); ``fps`` None: back to back."""

    def __init__(self, fps: float | None) -> None:
        self.period = 1.0 / fps if fps else 0.0
        self.last: float | None = None

    def wait(self) -> None:
        if self.period and self.last is not None:
            delay = self.last + self.period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        self.last = time.perf_counter()


def fit_frame(frame: av.VideoFrame, size: tuple[int, int]) -> av.VideoFrame:
    """The frame scaled to fit ``size`` (w, h) keeping its aspect ratio, centred on black.

    Stretching a 512x512 talking head to 1280x720 would make a 2.5x wide face, nothing like
    a 720p stream; fitting keeps faces the shape (and about the size) they have in one.
    """
    w, h = size
    s = min(w / frame.width, h / frame.height)
    nw, nh = max(2, round(frame.width * s) // 2 * 2), max(2, round(frame.height * s) // 2 * 2)
    rgb = frame.reformat(width=nw, height=nh, format="rgb24").to_ndarray()
    canvas = np.zeros((h, w, 3), np.uint8)
    y, x = (h - nh) // 2 // 2 * 2, (w - nw) // 2 // 2 * 2
    canvas[y : y + nh, x : x + nw] = rgb
    out = av.VideoFrame.from_ndarray(canvas, format="rgb24").reformat(format="yuv420p")
    out.pts, out.time_base = frame.pts, frame.time_base
    return out


def view_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``rgb`` as a platform's lower rendition shows it: fitted into ``size`` through yuv420p,
    the way a transcoder scales the stream it was sent (the masking ran before, at full size)."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    frame.pts, frame.time_base = 0, IMAGE_TIME_BASE
    return fit_frame(frame, size).to_ndarray(format="rgb24")


def side_view_size(width: int, height: int, side: int) -> tuple[int, int]:
    """The (w, h) of a rendition named by its shorter side (YouTube calls a 1080x1920 upload's
    360x640 rendition "360p"), even sides, never above the picture's own size. ``--view-size``
    fits into a box instead (height-named renditions: a portrait clip shrinks by its height)."""
    s = min(1.0, side / min(width, height))
    return max(2, round(width * s / 2) * 2), max(2, round(height * s / 2) * 2)


def iter_frames(path: Path, max_frames: int | None, size: tuple[int, int] | None = None) -> Iterator[av.VideoFrame]:
    """Decoded frames as the runtime hands them over (yuv420p), optionally fitted into ``size`` (w, h)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        n = 0
        for frame in container.decode(stream):
            if max_frames is not None and n >= max_frames:
                break
            if size is not None:
                frame = fit_frame(frame, size)
            elif frame.format.name != "yuv420p":
                frame = frame.reformat(format="yuv420p")
            n += 1
            yield frame


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720); even sides of 16 px and up (yuv420p halves them)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"expected WxH, e.g. 1280x720, got {text!r}") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise SystemExit(f"sides must be even and at least 16 px, got {text!r}")
    return w, h


def _events(proc: Any) -> Counter[str]:
    return Counter({str(k): int(v) for k, v in dict(getattr(proc, "events", None) or {}).items()})


@dataclass
class Processed:
    """One process() call: the output (None if it raised), wall ms, and the fallback reason
    when the processor did not really run on this frame (None when it did)."""

    out: av.VideoFrame | None
    wall_ms: float
    fallback: str | None


def run_processor(proc: Any, frame: av.VideoFrame, timing: TimingStats | None, counters: dict[str, int], index: int) -> Processed:
    """process() one frame, timing it.

    A frame counts as processed when the processor published fresh ``last_timings`` (a new
    dict) and did not count a frame-level fallback event (``FALLBACK_EVENTS``) meanwhile.
    A processor that raises gets fallback 'raised' (the runtime would cover the frame).
    """
    before_timings = getattr(proc, "last_timings", None)
    before_events = _events(proc)
    t0 = time.perf_counter()
    try:
        out = proc.process(frame)
    except Exception as exc:  # noqa: BLE001 - counted and reported, like the runtime does
        wall = (time.perf_counter() - t0) * 1000
        counters["process_errors"] = counters.get("process_errors", 0) + 1
        if counters["process_errors"] <= 3:
            print(f"  process() raised on frame {index}: {type(exc).__name__}: {exc}", file=sys.stderr)
        if timing is not None and index >= WARMUP_FRAMES:
            timing.add(wall, None, "raised")
        return Processed(None, wall, "raised")
    wall = (time.perf_counter() - t0) * 1000
    after_timings = getattr(proc, "last_timings", None)
    new_events = _events(proc) - before_events
    fallback = next((r for r in FALLBACK_EVENTS if new_events.get(r)), None)
    if fallback is None and after_timings is not None and after_timings is before_timings:
        fallback = "stale_timings"
    if timing is not None and index >= WARMUP_FRAMES:
        timing.add(wall, dict(after_timings or {}), fallback)
    if (out.width, out.height) != (frame.width, frame.height):
        counters["size_changed"] = counters.get("size_changed", 0) + 1
    if out.pts != frame.pts:
        counters["pts_changed"] = counters.get("pts_changed", 0) + 1
    return Processed(out, wall, fallback)


@dataclass
class ClipResult:
    name: str
    width: int
    height: int
    frames: int = 0
    frames_with_face: int = 0
    frames_with_unmasked_face: int = 0
    faces: list[FaceResult] = field(default_factory=list)
    flicker: list[float] = field(default_factory=list)
    strangers: list[float] = field(default_factory=list)  # cosine of two different people's input faces
    small_strangers: list[float] = field(default_factory=list)  # the same, both faces under 40 px
    counters: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # the processor's own counters (e.g. covered frames by reason)
    events_720p: dict[str, int] = field(default_factory=dict)  # the same, from the 1280x720 timing pass
    timing: TimingStats = field(default_factory=TimingStats)
    timing_720p: TimingStats | None = None
    sample: tuple[np.ndarray, np.ndarray, str] | None = None

    def summary(self) -> dict[str, Any]:
        d = face_summary(self.faces)
        d.update(
            width=self.width, height=self.height, frames=self.frames, frames_with_face=self.frames_with_face,
            frames_with_unmasked_face=self.frames_with_unmasked_face,
            unmasked_frame_share=_share(self.frames_with_unmasked_face, self.frames_with_face),
            flicker_ratio=L.percentiles(self.flicker), stranger_cosine=stranger_summary(self.strangers),
            stranger_cosine_under_40px=stranger_summary(self.small_strangers),
            errors=dict(self.counters), processor_events=dict(self.events),
            processor_events_1280x720=dict(self.events_720p),
            timing_native=self.timing.summary(),
            timing_1280x720=self.timing_720p.summary() if self.timing_720p is not None else None,
        )
        return d


def stranger_summary(values: list[float]) -> dict[str, Any]:
    return {**L.percentiles(values, (50, 95, 99)), "share_at_leak": _share(sum(v >= L.LEAK_COSINE for v in values), len(values))}


def _share(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def face_summary(faces: list[FaceResult]) -> dict[str, Any]:
    ident = [f for f in faces if f.identifiable]
    big = [f for f in ident if f.size >= 40]
    expr = [f.expression_error for f in faces if f.expression_error is not None]
    return {
        "faces": len(faces),
        "unmasked_faces": sum(f.unmasked for f in faces),
        "unchanged_faces": sum(f.unchanged for f in faces),
        "identifiable_faces": len(ident),
        "leak_faces": sum(f.leak for f in faces),
        "leak_rate": _share(sum(f.leak for f in ident), len(ident)),
        "leak_rate_faces_ge40px": _share(sum(f.leak for f in big), len(big)),
        "leak_rate_faces_under40px": _share(sum(f.leak for f in ident if f.size < 40), sum(f.size < 40 for f in ident)),
        "unmasked_by_face_size": {
            label: {"faces": len(sel), "unmasked": sum(f.unmasked for f in sel), "unchanged": sum(f.unchanged for f in sel)}
            for label, sel in (
                ("lt40px", [f for f in faces if f.size < 40]),
                ("40to80px", [f for f in faces if 40 <= f.size < 80]),
                ("ge80px", [f for f in faces if f.size >= 80]),
            )
        },
        "cosine": L.percentiles([f.cosine for f in ident]),
        "leak_faces_stream_aligned": sum(f.stream_leak for f in faces),
        "leak_rate_stream_aligned": _share(sum(f.stream_leak for f in ident), len(ident)),
        "cosine_stream_aligned": {
            **L.percentiles([f.stream_cosine for f in ident if f.stream_cosine is not None]),
            "output_face_not_found": sum(f.stream_cosine is None for f in ident),
        },
        "leak_faces_ungated": sum(f.cosine >= L.LEAK_COSINE for f in faces),
        "cosine_ungated": L.percentiles([f.cosine for f in faces]),
        "expression_error_features": L.percentiles([f.feature_error for f in faces if f.feature_error is not None]),
        "expression_error": {
            **L.percentiles(expr),
            "output_face_lost": sum(
                1 for f in faces if np.isfinite(f.input_presence) and f.input_presence >= L.LANDMARK_PRESENCE and not f.output_presence >= L.LANDMARK_PRESENCE
            ),
        },
    }


def evaluate_clip(
    path: Path, make_processor: Callable[[], Any], tools: Tools, max_frames: int | None, *,
    bench_720p: bool = True, expression: bool = True, pace: bool = True, judge_size: tuple[int, int] | None = None,
    lookahead: int = 0, view_size: tuple[int, int] | None = None, view_side: int | None = None,
) -> ClipResult:
    """Quality metrics at the clip's own size (or fitted into ``judge_size``), and timing,
    then a timing-only pass at 1280x720. With ``view_size`` the masker runs as above
    and the referees judge input and output both scaled into ``view_size``, as a viewer of
    a platform's lower rendition sees them; ``view_side`` does the same with each frame
    scaled to that shorter side (``side_view_size``).

    With ``pace`` frames are offered no faster than the clip's frame rate, as a live source
    would (the referee's own work between frames usually takes longer anyway).
    """
    fps = clip_fps(path) if pace else None
    pacer = Pacer(fps)
    proc = make_processor()
    result: ClipResult | None = None
    prev: tuple[int, np.ndarray, np.ndarray] | None = None  # the last judged frame: index, input, output
    sample_target = (max_frames or 90) // 2
    best_dist = None
    # as the runtime and file mode do: each output is held back ``lookahead`` frames and
    # covered where a later frame found a face anew (pipeline/lookahead.py)
    held: Lookahead[tuple[int, np.ndarray]] = Lookahead(lookahead)

    def judge(i: int, in_rgb: np.ndarray, out: av.VideoFrame) -> None:
        nonlocal prev, best_dist
        out_rgb = out.to_ndarray(format="rgb24")
        if out_rgb.shape != in_rgb.shape:
            prev = None
            return
        size = view_size or (side_view_size(in_rgb.shape[1], in_rgb.shape[0], view_side) if view_side else None)
        if size is not None:
            in_rgb, out_rgb = view_rgb(in_rgb, size), view_rgb(out_rgb, size)
        faces = tools.detector.detect(in_rgb)
        if faces:
            judged = judge_faces(in_rgb, out_rgb, faces, tools, expression=expression, strangers=result.strangers,
                                 small_strangers=result.small_strangers)
            result.faces.extend(judged)
            result.frames_with_face += 1
            if any(f.unmasked for f in judged):
                result.frames_with_unmasked_face += 1
            if prev is not None and prev[0] == i - 1:  # consecutive frames only (one may be withheld)
                result.flicker.extend(flicker_ratios(prev[1], in_rgb, prev[2], out_rgb, faces))
            dist = abs(i - sample_target)
            if best_dist is None or dist < best_dist:
                best_dist = dist
                ident = [f.cosine for f in judged if f.identifiable]
                note = (f"frame {i}, {len(faces)} face(s), {sum(f.unmasked for f in judged)} unmasked, "
                        f"max cos {max(ident):.2f}" if ident else f"frame {i}, {len(faces)} face(s), "
                        f"{sum(f.unmasked for f in judged)} unmasked")
                result.sample = (in_rgb, out_rgb, note)
        prev = (i, in_rgb, out_rgb)

    try:
        for i, frame in enumerate(iter_frames(path, max_frames, judge_size)):
            if result is None:
                result = ClipResult(path.stem, frame.width, frame.height)
            in_rgb = frame.to_ndarray(format="rgb24")
            pacer.wait()
            out = run_processor(proc, frame, result.timing, result.counters, i).out
            result.frames += 1
            if out is None:  # withheld, as the runtime withholds it; the frames held stay held
                continue
            for late_out, (j, late_rgb) in held.push_processed(proc, out, (i, in_rgb)):
                judge(j, late_rgb, late_out)
        for late_out, (j, late_rgb) in held.flush():
            judge(j, late_rgb, late_out)
    finally:
        if result is not None:
            result.events = dict(_events(proc))
            if held.covered:  # the lookahead's covers, counted as the runtime counts them
                result.events["found_late"] = held.covered
        proc.close()
    if result is None:
        raise ValueError(f"{path}: no video frames")
    if bench_720p:
        proc = make_processor()
        result.timing_720p = TimingStats()
        counters: dict[str, int] = {}
        pacer = Pacer(fps)
        try:
            for i, frame in enumerate(iter_frames(path, max_frames, BENCH_SIZE)):
                pacer.wait()
                run_processor(proc, frame, result.timing_720p, counters, i)
        finally:
            result.events_720p = dict(_events(proc))
            proc.close()
        for k, v in counters.items():
            result.counters[f"1280x720_{k}"] = v
    return result


def evaluate_images(eval_dir: Path, tools: Tools, make_processor: Callable[[], Any], detect_width: int) -> dict[str, Any]:
    """Recall on the dlib photos (pipeline detector and the independent one) and masked-output check."""
    images = L.load_dlib_boxes(eval_dir)
    try:
        from pipeline.backends.onnx import YuNetDetector

        pipe_det = YuNetDetector(detect_width=detect_width)
        pipe_name = f"pipeline.backends.onnx.YuNetDetector(detect_width={detect_width})"
    except ImportError as exc:
        pipe_det, pipe_name = None, f"unavailable ({exc})"
    gts, pipe_boxes, ind_boxes, face_boxes = [], [], [], []
    per_image, per_face = [], []
    for im in images:
        rgb0 = L.read_rgb(im.path)
        frame = av.VideoFrame.from_ndarray(rgb0, format="rgb24").reformat(format="yuv420p")
        rgb = frame.to_ndarray(format="rgb24")  # what the processor sees
        ind = tools.detector.detect(rgb)
        pdets = pipe_det.detect(rgb) if pipe_det is not None else []
        gts.append(im.boxes)
        ind_boxes.append(np.array([f.box for f in ind]).reshape(-1, 4))
        pipe_boxes.append(np.array([d.box for d in pdets]).reshape(-1, 4))
        # the masker on a still stream of the photo, until it has really run on it IMAGE_PROCESSED times
        proc = make_processor()
        last: Processed | None = None
        counters: dict[str, int] = {}
        offers, processed = 0, 0
        fallbacks: Counter[str] = Counter()
        try:
            while processed < IMAGE_PROCESSED and offers < IMAGE_MAX_OFFERS:
                f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
                f.pts = offers
                f.time_base = IMAGE_TIME_BASE
                last = run_processor(proc, f, None, counters, offers)
                offers += 1
                if last.fallback is None:
                    processed += 1
                    continue
                fallbacks[last.fallback] += 1
                seen, deadline = getattr(proc, "last_timings", None), time.monotonic() + IMAGE_CATCH_UP_S
                while getattr(proc, "last_timings", None) is seen and time.monotonic() < deadline:
                    time.sleep(0.01)  # let the late frame finish before offering the next
            tracks = getattr(getattr(proc, "tracker", None), "tracks", None) or []
            face_boxes.append(np.array([t.box for t in tracks], np.float32).reshape(-1, 4))
        finally:
            proc.close()
        out_rgb = last.out.to_ndarray(format="rgb24") if last is not None and last.out is not None else None
        ind_match = L.match_boxes(im.boxes, ind_boxes[-1])
        pipe_match = L.match_boxes(im.boxes, pipe_boxes[-1])
        unmasked_here = 0
        for gi, gt in enumerate(im.boxes):
            entry: dict[str, Any] = {
                "image": im.path.name, "box": [float(v) for v in gt], "size": float(max(gt[2] - gt[0], gt[3] - gt[1])),
                "pipeline_detected": pipe_match[gi] is not None, "independent_detected": ind_match[gi] is not None,
            }
            if out_rgb is None:
                entry.update(unmasked=None, note="processor raised on the judged offer (the runtime would cover)")
            else:
                diff = L.box_mean_abs_diff(rgb, out_rgb, gt)
                cos = self_blur = None
                if ind_match[gi] is not None:
                    c, sb, _ = identity_cosines(rgb, out_rgb, [ind[ind_match[gi]].kps], tools.recognizer)
                    cos, self_blur = float(c[0]), float(sb[0])
                leak = cos is not None and self_blur < L.LEAK_COSINE and cos >= L.LEAK_COSINE
                unmasked = bool(diff < L.UNCHANGED_MEAN_ABS_DIFF or leak)
                unmasked_here += unmasked
                entry.update(
                    box_diff=round(diff, 2), cosine=None if cos is None else round(cos, 4),
                    identifiable=None if self_blur is None else self_blur < L.LEAK_COSINE, leak=leak, unmasked=unmasked,
                )
            per_face.append(entry)
        per_image.append({
            "image": im.path.name, "boxes": len(im.boxes), "pipeline_detections": len(pdets),
            "independent_detections": len(ind), "unmasked_faces": unmasked_here, "errors": counters,
            "offers": offers, "fallback_offers": dict(fallbacks),
            "judged_frame_processed": last is not None and last.fallback is None,
        })

    def _recall(dets: list[np.ndarray], min_size: float = 0) -> dict[str, Any]:
        sel_gt = [g[np.maximum(g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]) >= min_size] for g in gts]
        hit, total = L.recall(sel_gt, dets, 0.5)
        return {"matched": hit, "boxes": total, "recall": _share(hit, total)}

    return {
        "boxes": int(sum(len(g) for g in gts)),
        "images": len(images),
        "pipeline_detector": pipe_name,
        "recall": _recall(pipe_boxes) if pipe_det is not None else None,
        "recall_faces_ge40px": _recall(pipe_boxes, 40) if pipe_det is not None else None,
        "pipeline_face_recall": _recall(face_boxes),
        "pipeline_face_recall_faces_ge40px": _recall(face_boxes, 40),
        "independent_recall": _recall(ind_boxes),
        "independent_recall_faces_ge40px": _recall(ind_boxes, 40),
        "masked_output": {
            "annotated_faces": len(per_face),
            "unmasked_faces": sum(1 for f in per_face if f.get("unmasked")),
            "unchanged_faces": sum(1 for f in per_face if f.get("box_diff") is not None and f["box_diff"] < L.UNCHANGED_MEAN_ABS_DIFF),
            "leak_faces": sum(1 for f in per_face if f.get("leak")),
            "faces_not_judged": sum(1 for f in per_face if f.get("unmasked") is None),
            "process_errors": sum(i["errors"].get("process_errors", 0) for i in per_image),
            "images_with_unmasked_face": sum(1 for i in per_image if i["unmasked_faces"]),
            "images_judged_on_a_fallback_frame": sum(1 for i in per_image if not i["judged_frame_processed"]),
            "images_with_fallback_offers": sum(1 for i in per_image if i["fallback_offers"]),
            "protocol": (
                f"each photo is offered as a still stream until the processor has run on it {IMAGE_PROCESSED} times "
                f"(at most {IMAGE_MAX_OFFERS} offers; after a fallback the next offer waits for the late frame); "
                "the last output is judged"
            ),
            "rule": (
                "annotated box unchanged (mean abs diff < 3) OR a leak (cosine >= 0.35 on an identifiable face) where the "
                "independent detector matched the box (its keypoints align the face)"
            ),
        },
        "per_image": per_image,
        "per_face": per_face,
    }


# --------------------------------------------------------------------------- contact sheet


def _fit(img: np.ndarray, w: int, h: int) -> np.ndarray:
    ih, iw = img.shape[:2]
    s = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * s)), max(1, round(ih * s))
    tile = np.full((h, w, 3), 24, np.uint8)
    r = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    y, x = (h - nh) // 2, (w - nw) // 2
    tile[y : y + nh, x : x + nw] = r
    return tile


def _label(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.5) -> None:
    # on the sheet's dark bars; no outline (OpenCV 5 draws thick text wider, as a ghost copy)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (235, 235, 235), 1, cv2.LINE_AA)


def _sheet(groups: list[tuple[str, list[np.ndarray]]], per_row: int, width: int, title: str) -> np.ndarray:
    """RGB grid: ``per_row`` labelled groups of equal tiles per row."""
    n = max(len(images) for _, images in groups) if groups else 1
    tile_w = width // (per_row * n)
    tile_h = round(tile_w * 0.75)
    bar = 26
    head = 30 if title else 0
    rows = max(1, -(-len(groups) // per_row))
    sheet = np.full((head + rows * (tile_h + bar), width, 3), 16, np.uint8)
    if title:
        _label(sheet, title, 8, 21, 0.6)
    for k, (label, images) in enumerate(groups):
        r, c = divmod(k, per_row)
        y, x = head + r * (tile_h + bar), c * n * tile_w
        for i, img in enumerate(images):
            sheet[y + bar : y + bar + tile_h, x + i * tile_w : x + (i + 1) * tile_w] = _fit(img, tile_w, tile_h)
            if i:
                cv2.line(sheet, (x + i * tile_w, y + bar), (x + i * tile_w, y + bar + tile_h), (200, 200, 200), 1)
        if c:
            cv2.line(sheet, (x, y), (x, y + bar + tile_h), (90, 90, 90), 2)
        _label(sheet, label, x + 6, y + 18, 0.45 if n > 1 else 0.42)
    return sheet


def contact_sheet(samples: list[tuple[str, np.ndarray, np.ndarray, str]], width: int = 1600, title: str = "") -> np.ndarray:
    """RGB grid, two before|after pairs per row, each pair labelled with its clip and note."""
    return _sheet([(f"{name}: before | after   ({note})", [before, after]) for name, before, after, note in samples], 2, width, title)


def output_sheet(samples: list[tuple[str, np.ndarray, str]], width: int = 1600, title: str = "") -> np.ndarray:
    """RGB grid of masked outputs only, four per row, each labelled with its clip and note.

    The committed sheet shows what an audience would see; the inputs (real people from
    ../shared/eval, which must not be copied into the repository) stay in bench/out.
    """
    return _sheet([(f"{name} ({note})", [after]) for name, after, note in samples], 4, width, title)


def pick_sheet_clips(results: list[ClipResult], n: int) -> list[ClipResult]:
    with_sample = [r for r in results if r.sample is not None]
    rank = {name: i for i, name in enumerate(SHEET_PREFERENCE)}
    with_sample.sort(key=lambda r: (rank.get(r.name, len(rank)), r.name))
    return with_sample[:n]


# --------------------------------------------------------------------------- driver


def list_clips(eval_dir: Path, names: list[str] | None) -> list[Path]:
    folder = eval_dir / "videos"
    available = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) if folder.is_dir() else []
    if not names:
        return available
    chosen = []
    for n in names:
        hits = [p for p in available if p.name == n or p.stem == n]
        if not hits:
            raise SystemExit(f"no clip {n!r} in {folder} (have: {', '.join(p.name for p in available)})")
        chosen.extend(hits)
    return chosen


def pipeline_config(overrides: list[str]) -> Any:
    from edge_server.config import PipelineConfig

    config = PipelineConfig()
    fields = {f.name: f for f in dataclasses.fields(PipelineConfig)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set wants KEY=VALUE with KEY one of {sorted(fields)}; got {item!r}")
        current = getattr(config, key)
        if isinstance(current, bool):
            parsed: Any = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(current, int):
            parsed = int(value)
        elif isinstance(current, float):
            parsed = float(value)
        else:
            parsed = value
        setattr(config, key, parsed)
    return config


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if not np.isfinite(obj) else round(obj, 4)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v) for v in obj]
    if isinstance(obj, np.generic):
        return _round(obj.item())
    return obj


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def print_summary(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(f"\nmask_eval: processor={s['processor']} mode={s['mode']} clips={len(report['videos']['clips'])} "
          f"max_frames={s['max_frames']} ort_threads={s['ort_threads']}"
          + (f" judged at {s['judge_size'][0]}x{s['judge_size'][1]} ('native' below means that size)" if s.get("judge_size") else "")
          + (f", viewed at {s['view_size'][0]}x{s['view_size'][1]} (input and output scaled there before judging)" if s.get("view_size") else "")
          + (f", viewed at a shorter side of {s['view_side']} px (input and output scaled there before judging)" if s.get("view_side") else ""))
    t = report["timing"]
    for label in ("native", "1280x720"):
        ts = t.get(label)
        if not ts or not ts["frames"]:
            continue
        stages = ", ".join(f"{k} {_fmt(v['p50'], '.1f')}/{_fmt(v['p95'], '.1f')}" for k, v in ts["stages_ms"].items())
        print(f"timing {label:>8}: wall p50 {_fmt(ts['wall_ms']['p50'], '.1f')} ms, p95 {_fmt(ts['wall_ms']['p95'], '.1f')} ms "
              f"over {ts['frames']} processed frames (fallbacks {ts['fallback_frames'] or 0}); stages p50/p95 ms: "
              f"{stages or '(no last_timings)'}")
    im = report.get("images")
    if im:
        r = im["recall"]
        print(f"dlib photos: {im['boxes']} boxes; pipeline detector recall "
              f"{_fmt(r and r['recall'], '.3f')} (>=40px {_fmt(im['recall_faces_ge40px'] and im['recall_faces_ge40px']['recall'], '.3f')}), "
              f"independent {_fmt(im['independent_recall']['recall'], '.3f')}; the masker's face boxes "
              f"{_fmt(im['pipeline_face_recall']['recall'], '.3f')} (>=40px {_fmt(im['pipeline_face_recall_faces_ge40px']['recall'], '.3f')}); masked output leaves "
              f"{im['masked_output']['unmasked_faces']} of {im['masked_output']['annotated_faces']} faces unmasked "
              f"({im['masked_output']['images_with_fallback_offers']} photos had fallback offers, "
              f"{im['masked_output']['images_judged_on_a_fallback_frame']} judged on one)")
    print(f"{'clip':<34}{'size':>10}{'frames':>7}{'w/face':>7}{'unmask%':>8}{'faces':>7}{'leak%':>7}"
          f"{'cos50':>7}{'cos95':>7}{'cosmax':>7}{'expr':>7}{'flick':>7}{'wall50':>8}{'720p50':>8}")
    for name, c in report["videos"]["clips"].items():
        share = c["unmasked_frame_share"]
        leak = c["leak_rate"]
        t720 = c.get("timing_1280x720") or {"wall_ms": {"p50": None}}
        print(f"{name:<34}{c['width']:>5}x{c['height']:<4}{c['frames']:>7}{c['frames_with_face']:>7}"
              f"{_fmt(share and share * 100, '.1f'):>8}{c['faces']:>7}{_fmt(leak and leak * 100, '.1f'):>7}"
              f"{_fmt(c['cosine']['p50']):>7}{_fmt(c['cosine']['p95']):>7}{_fmt(c['cosine']['max']):>7}"
              f"{_fmt(c['expression_error']['mean'], '.3f'):>7}{_fmt(c['flicker_ratio']['p50']):>7}"
              f"{_fmt(c['timing_native']['wall_ms']['p50'], '.1f'):>8}{_fmt(t720['wall_ms']['p50'], '.1f'):>8}")
    o = report["videos"]["overall"]
    print(f"overall: {o['frames']} frames, {o['frames_with_face']} with a face; unmasked-face frame share "
          f"{_fmt(o['unmasked_frame_share'], '.4f')}; leak rate {_fmt(o['leak_rate'], '.4f')} "
          f"(>=40px {_fmt(o['leak_rate_faces_ge40px'], '.4f')}) over {o['identifiable_faces']} identifiable of {o['faces']} faces "
          f"(ungated leaks {o['leak_faces_ungated']}); cosine p50/p95/max "
          f"{_fmt(o['cosine']['p50'])}/{_fmt(o['cosine']['p95'])}/{_fmt(o['cosine']['max'])}; expression error mean/p95 "
          f"{_fmt(o['expression_error']['mean'], '.3f')}/{_fmt(o['expression_error']['p95'], '.3f')} "
          f"(eyes, brows, lips {_fmt(o['expression_error_features']['mean'], '.3f')}/{_fmt(o['expression_error_features']['p95'], '.3f')}) "
          f"(output face lost {o['expression_error']['output_face_lost']}); flicker ratio p50 {_fmt(o['flicker_ratio']['p50'])}")
    sa = o.get("cosine_stream_aligned") or {}
    if "leak_rate_stream_aligned" in o:
        print(f"aligned on the stream's own face: leak rate {_fmt(o['leak_rate_stream_aligned'], '.4f')} "
              f"({o['leak_faces_stream_aligned']} faces), cosine p50/p95/max {_fmt(sa.get('p50'))}/{_fmt(sa.get('p95'))}/"
              f"{_fmt(sa.get('max'))}, no face found in the output for {sa.get('output_face_not_found', 0)} identifiable faces")
    st = o.get("stranger_cosine") or {}
    if st.get("n"):
        print(f"strangers (two different people's input faces in one frame, {st['n']} pairs): cosine p50/p95/p99/max "
              f"{_fmt(st['p50'])}/{_fmt(st['p95'])}/{_fmt(st['p99'])}/{_fmt(st['max'])}, share at the leak line "
              f"{_fmt(st['share_at_leak'], '.4f')} (the masked faces' leak rate above: {_fmt(o['leak_rate'], '.4f')})")
    st = o.get("stranger_cosine_under_40px") or {}
    if st.get("n"):
        print(f"strangers under 40 px ({st['n']} pairs): cosine p50/p95/p99/max {_fmt(st['p50'])}/{_fmt(st['p95'])}/"
              f"{_fmt(st['p99'])}/{_fmt(st['max'])}, share at the leak line {_fmt(st['share_at_leak'], '.4f')} "
              f"(the masked faces under 40 px: {_fmt(o.get('leak_rate_faces_under40px'), '.4f')})")
    if o.get("processor_events") or o.get("errors"):
        print(f"processor events: {o.get('processor_events') or {}}; bench-side errors: {o.get('errors') or {}}")
    if o.get("processor_events_1280x720"):
        # Only timed at 1280x720, not judged: these say where the masker covered instead of swapping there.
        print(f"processor events at 1280x720: {o['processor_events_1280x720']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval-dir", default=None, help="evaluation media (default: $HIKARIEDGE_EVAL_DIR or <repo>/../shared/eval)")
    p.add_argument("--processor", choices=PROCESSORS, default="mask",
                   help="mask: pipeline.factory.build_processor; the stand-ins calibrate the measurements")
    p.add_argument("--mode", choices=("anonymize", "persona", "blur", "pixelate"), default="anonymize",
                   help="masking mode passed to build_processor (blur/pixelate: cover modes, no swap)")
    p.add_argument("--seed", type=int, default=None,
                   help="anonymize personas from this seed (+1 per processor made) instead of at random: repeatable runs")
    p.add_argument("--persona", default=None, help="builtin persona id or STYLE:SEED, e.g. sculpted:101 (persona mode; None when pipeline.procedural is absent)")
    p.add_argument("--clips", action="append", default=None,
                   help="clip file names or stems, comma-separated or repeated (default: every clip in videos/)")
    p.add_argument("--max-frames", type=int, default=None, help=f"frames per clip (default {DEFAULT_MAX_FRAMES}; 0 = all)")
    p.add_argument("--quick", action="store_true", help=f"{len(QUICK_CLIPS)} clips x {QUICK_FRAMES} frames (tests, smoke runs)")
    p.add_argument("--no-720p", action="store_true", help="skip the timing pass on frames resized to 1280x720")
    p.add_argument("--view-size", default=None, metavar="WxH",
                   help="mask at the clip's own size (or --judge-size), judge input and output scaled into WxH: a platform's lower rendition")
    p.add_argument("--view-side", type=int, default=None, metavar="N",
                   help="as --view-size, but each clip scaled to this shorter side (renditions named by the shorter side, as YouTube names portrait ones)")
    p.add_argument("--judge-size", default=None, metavar="WxH",
                   help="judge every clip fitted into this size (letterboxed, as the 1280x720 pass) instead of its own size")
    p.add_argument("--no-pace", action="store_true", help="offer frames back to back instead of at most at the clip's frame rate")
    p.add_argument("--no-images", action="store_true", help="skip the dlib photo recall / masked-photo check")
    p.add_argument("--no-expression", action="store_true", help="skip the landmark (expression) comparison")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="PipelineConfig override, e.g. --set detect_every=3 (repeatable)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"JSON report (default {DEFAULT_OUT}; relative to the repository)")
    p.add_argument("--sheet", default=DEFAULT_SHEET, help=f"contact sheet PNG (default {DEFAULT_SHEET}; 'none' to skip)")
    p.add_argument("--docs-sheet", default=DEFAULT_DOCS_SHEET, help=f"output-only sheet for the docs (default {DEFAULT_DOCS_SHEET}; 'none' to skip)")
    p.add_argument("--sheet-clips", type=int, default=8)
    p.add_argument("--quiet", action="store_true", help="no per-clip progress lines")
    args = p.parse_args(argv)
    if args.view_side is not None and (args.view_size is not None or args.view_side < 16):
        p.error("--view-side takes a shorter side of 16 px or more, and not with --view-size")
    return args


def _repo_path(p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else REPO_ROOT / path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cv2.setNumThreads(1)
    try:
        eval_dir = L.resolve_eval_dir(args.eval_dir)
    except L.EvalMediaMissing as exc:
        print(f"mask_eval skipped: {exc}")
        return 0
    names = [n.strip() for item in (args.clips or []) for n in item.split(",") if n.strip()] or None
    if args.quick and names is None:
        names = list(QUICK_CLIPS)
    max_frames = args.max_frames if args.max_frames is not None else (QUICK_FRAMES if args.quick else DEFAULT_MAX_FRAMES)
    max_frames = None if max_frames == 0 else max_frames
    clips = list_clips(eval_dir, names)
    judge_size = parse_size(args.judge_size) if args.judge_size else None
    view_size = parse_size(args.view_size) if args.view_size else None
    config = pipeline_config(args.overrides)
    persona, persona_id = resolve_persona(args.persona, args.mode) if args.processor == "mask" else (None, None)
    make = processor_factory(args.processor, config, args.mode, persona, args.seed)
    log = (lambda *_: None) if args.quiet else (lambda msg: print(msg, flush=True))
    tools = Tools.load(eval_dir)
    started = time.time()

    images = None
    if not args.no_images:
        log("dlib photos: recall and masked output ...")
        images = evaluate_images(eval_dir, tools, make, config.detect_width)

    results: list[ClipResult] = []
    for path in clips:
        t0 = time.time()
        try:
            r = evaluate_clip(path, make, tools, max_frames, bench_720p=not args.no_720p, expression=not args.no_expression,
                              pace=not args.no_pace, judge_size=judge_size, lookahead=config.lookahead_frames,
                              view_size=view_size, view_side=args.view_side)
        except (av.error.FFmpegError, ValueError) as exc:
            log(f"  {path.name}: skipped, cannot decode ({exc})")
            continue
        results.append(r)
        s = face_summary(r.faces)
        log(f"  {path.name}: {r.frames} frames, {r.frames_with_face} with a face, unmasked frames {r.frames_with_unmasked_face}, "
            f"leak {s['leak_faces']}/{s['faces']}, wall p50 {_fmt(L.percentiles(r.timing.wall)['p50'], '.1f')} ms "
            f"({time.time() - t0:.1f} s)")

    all_faces = [f for r in results for f in r.faces]
    native, t720 = TimingStats(), TimingStats()
    for r in results:
        native.extend(r.timing)
        if r.timing_720p is not None:
            t720.extend(r.timing_720p)
    frames_face = sum(r.frames_with_face for r in results)
    frames_unmasked = sum(r.frames_with_unmasked_face for r in results)
    overall = face_summary(all_faces)
    overall.update(
        clips=len(results), frames=sum(r.frames for r in results), frames_with_face=frames_face,
        frames_with_unmasked_face=frames_unmasked, unmasked_frame_share=_share(frames_unmasked, frames_face),
        flicker_ratio=L.percentiles([x for r in results for x in r.flicker]),
        stranger_cosine=stranger_summary([x for r in results for x in r.strangers]),
        stranger_cosine_under_40px=stranger_summary([x for r in results for x in r.small_strangers]),
        leak_rate_per_clip={r.name: face_summary(r.faces)["leak_rate"] for r in results},
        errors={k: sum(r.counters.get(k, 0) for r in results) for k in sorted({k for r in results for k in r.counters})},
        processor_events={k: sum(r.events.get(k, 0) for r in results) for k in sorted({k for r in results for k in r.events})},
        processor_events_1280x720={k: sum(r.events_720p.get(k, 0) for r in results) for k in sorted({k for r in results for k in r.events_720p})},
    )

    sheet_path = None
    if args.sheet and args.sheet.lower() != "none":
        chosen = pick_sheet_clips(results, args.sheet_clips)
        if chosen:
            title = f"HikariEdge mask_eval: processor={args.processor} mode={args.mode}  (left: input, right: output)"
            sheet = contact_sheet([(r.name, r.sample[0], r.sample[1], r.sample[2]) for r in chosen], title=title)
            sheet_path = _repo_path(args.sheet)
            sheet_path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(sheet_path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    docs_sheet_path = None
    if args.docs_sheet and args.docs_sheet.lower() != "none":
        chosen = pick_sheet_clips(results, args.sheet_clips)
        if chosen:
            title = f"HikariEdge masked output, processor={args.processor} mode={args.mode} (eval clips; inputs not shown)"
            sheet = output_sheet([(r.name, r.sample[1], r.sample[2]) for r in chosen], title=title)
            docs_sheet_path = _repo_path(args.docs_sheet)
            docs_sheet_path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(docs_sheet_path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])

    import onnxruntime

    report = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__, "pyav": av.__version__, "numpy": np.__version__,
        },
        "settings": {
            "processor": args.processor, "mode": args.mode, "persona": persona_id, "seed": args.seed,
            "eval_dir": str(eval_dir), "clips": [p.name for p in clips], "max_frames": max_frames,
            "ort_threads": int(os.environ.get("HIKARIEDGE_ORT_THREADS", "1")), "cv2_threads": cv2.getNumThreads(),
            "pipeline_config": dataclasses.asdict(config), "bench_size": list(BENCH_SIZE),
            "judge_size": list(judge_size) if judge_size else None,
            "view_size": list(view_size) if view_size else None,
            "view_side": args.view_side,
            "warmup_frames_excluded": WARMUP_FRAMES, "paced_at_clip_fps": not args.no_pace, "leak_cosine": L.LEAK_COSINE,
            "unchanged_mean_abs_diff": L.UNCHANGED_MEAN_ABS_DIFF,
        },
        "definitions": DEFINITIONS,
        "timing": {"native": native.summary(), "1280x720": t720.summary() if not args.no_720p else None},
        "images": images,
        "videos": {"overall": overall, "clips": {r.name: r.summary() for r in results}},
        "contact_sheet": str(sheet_path.relative_to(REPO_ROOT) if sheet_path and sheet_path.is_relative_to(REPO_ROOT) else sheet_path) if sheet_path else None,
        "elapsed_s": round(time.time() - started, 1),
    }
    report = _round(report)
    out = _repo_path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print_summary(report)
    print(f"report: {out}" + (f"; contact sheet: {sheet_path}" if sheet_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
