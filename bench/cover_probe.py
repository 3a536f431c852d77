"""How much identity each cover style leaves on small faces: the eval photos, scaled down.

The privacy guard covers every face it cannot swap (too small, turned, lost, a head without
a found face) with ``pipeline.cover_style``. This probe asks the recognizer how much of the
person is left under each style at the sizes where the guard covers: every face the
independent detector finds in ``../shared/eval/images`` is scaled to S px, covered the way
the masker covers a small face (its box grown by 0.2, then :func:`pipeline.cover.cover`),
and optionally viewed smaller again (a platform's lower rendition of the covered stream).
The cosine between the covered face and the same scaled face uncovered, aligned on the
input's keypoints, is the leak measure of ``bench/mask_eval.py``; faces the recognizer
cannot tell from their own blurred copy are not counted, as there.

    .venv/bin/python bench/cover_probe.py --out bench/out/cover_probe.json

The figures come with a caveat (``CAVEAT``, printed and written with them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench import eval_lib as L  # noqa: E402
from bench.mask_eval import identity_cosines  # noqa: E402
from pipeline.cover import COVER_STYLES, cover  # noqa: E402
from pipeline.frame_io import even_box  # noqa: E402
from pipeline.tracking import grow_box  # noqa: E402

COVER_MARGIN = 0.2  # the masker's small-face cover: the face box grown by this share
MIN_SOURCE_FACE_PX = 60  # a face is probed only at sizes below its own
DEFAULT_SIZES = (30, 45, 60, 90, 120)
TIMING_SIDES = (30, 50, 70, 100, 150, 250, 400)
DEFAULT_VIEWS = (1.0, 1 / 3)  # 1/3: a 1080p stream's 360p rendition
CAVEAT = (
    "the identifiability gate is itself a Gaussian blur (sigma 5 px in the 112 px aligned crop) and the blur "
    "cover is a stronger one, so this recognizer is the judge most favourable to blur; it says nothing of a "
    "person who knows the streamer, or of a deblurring attack"
)


@dataclass(frozen=True)
class ProbeFace:
    image: str
    face: L.Face


@dataclass(frozen=True)
class Judged:
    cosine: float
    identifiable: bool


def scaled_with_face(rgb: np.ndarray, face: L.Face, size_px: float) -> tuple[np.ndarray, L.Face]:
    """The whole photo scaled so ``face`` is ``size_px`` on its longer side, and the face with it."""
    f = size_px / face.size
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return small, L.Face(face.box * f, face.score, face.kps * f)


def covered(rgb: np.ndarray, face: L.Face, style: str) -> np.ndarray:
    """``rgb`` with ``face`` covered as the masker covers a face it cannot swap."""
    out = rgb.copy()
    h, w = out.shape[:2]
    r = even_box(grow_box(face.box.astype(np.float32), COVER_MARGIN, (h, w)), h, w)
    if r is not None:
        x0, y0, x1, y1 = r
        out[y0:y1, x0:x1] = cover(out[y0:y1, x0:x1], style)
    return out


def judge(recognizer: L.Recognizer, before: np.ndarray, after: np.ndarray, face: L.Face) -> Judged:
    """Cosine of the covered face to the uncovered one, and whether the recognizer can judge it
    (``mask_eval``'s own measure)."""
    cos, self_blur, _ = identity_cosines(before, after, [face.kps], recognizer)
    return Judged(float(cos[0]), float(self_blur[0]) < L.LEAK_COSINE)


def probe_faces(eval_dir: Path, detector: L.IndependentYuNet, limit: int | None = None) -> list[tuple[np.ndarray, ProbeFace]]:
    """(photo, face) for every face of ``MIN_SOURCE_FACE_PX`` and up in the eval photos."""
    paths = sorted(p for p in (eval_dir / "images").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    out: list[tuple[np.ndarray, ProbeFace]] = []
    for p in paths[:limit]:
        rgb = L.read_rgb(p)
        for face in L.yunet_detect_full(detector, rgb, max_side=2048):
            if face.size >= MIN_SOURCE_FACE_PX:
                out.append((rgb, ProbeFace(str(p.relative_to(eval_dir)), face)))
    return out


def run(eval_dir: Path, styles: tuple[str, ...], sizes: tuple[int, ...], views: tuple[float, ...],
        limit: int | None = None) -> dict[str, Any]:
    detector, recognizer = L.IndependentYuNet(eval_dir), L.Recognizer(eval_dir)
    faces = probe_faces(eval_dir, detector, limit)
    rows: list[dict[str, Any]] = []
    for size in sizes:
        for view in views:
            view_px = size * view
            if view_px < 20:
                continue  # the recognizer reads nothing at that size (mask_eval counts none)
            cos: dict[str, list[float]] = {s: [] for s in styles}
            images: list[str] = []  # the judged faces' photos, in the order of cos's lists
            for rgb, pf in faces:
                if pf.face.size <= size:
                    continue
                small, f_small = scaled_with_face(rgb, pf.face, size)
                outs = {s: covered(small, f_small, s) for s in styles}
                if view != 1.0:
                    vh, vw = max(1, round(small.shape[0] * view)), max(1, round(small.shape[1] * view))
                    small = cv2.resize(small, (vw, vh), interpolation=cv2.INTER_AREA)
                    outs = {s: cv2.resize(o, (vw, vh), interpolation=cv2.INTER_AREA) for s, o in outs.items()}
                    f_small = L.Face(f_small.box * view, f_small.score, f_small.kps * view)
                judged = {s: judge(recognizer, small, o, f_small) for s, o in outs.items()}
                if not next(iter(judged.values())).identifiable:
                    continue  # the gate depends on the input only
                images.append(pf.image)
                for s, j in judged.items():
                    cos[s].append(j.cosine)
            for s in styles:
                c = np.array(cos[s], np.float64)
                rows.append({
                    "style": s, "cover_px": size, "view_px": round(view_px, 1), "identifiable_faces": len(images),
                    "at_leak_line": int((c >= L.LEAK_COSINE).sum()),
                    "cosine_p50": round(float(np.median(c)), 4) if len(c) else None,
                    "cosine_p95": round(float(np.percentile(c, 95)), 4) if len(c) else None,
                    "cosine_max": round(float(c.max()), 4) if len(c) else None,
                    "worst_image": images[int(np.argmax(c))] if len(c) else None,
                })
    return {"faces_probed": len(faces), "rows": rows,
            "verification": verification(eval_dir, detector, recognizer, styles, sizes)}


def cover_timings(styles: tuple[str, ...], sides: tuple[int, ...] = TIMING_SIDES, repeats: int = 200) -> list[dict[str, Any]]:
    """Median and p95 microseconds to cover one face box of each side (RGB, 1.2:1 as a grown face box)."""
    rng = np.random.default_rng(0)
    rows = []
    for side in sides:
        region = rng.integers(0, 256, (round(side * 1.2), side, 3), dtype=np.uint8)
        for style in styles:
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                cover(region, style)
                times.append((time.perf_counter() - t) * 1e6)
            rows.append({"style": style, "side_px": side, "us_p50": round(float(np.median(times)), 1),
                         "us_p95": round(float(np.percentile(times, 95)), 1)})
    return rows


def _largest_face(detector: L.IndependentYuNet, rgb: np.ndarray) -> L.Face | None:
    faces = L.yunet_detect_full(detector, rgb, max_side=2048)
    return max(faces, key=lambda f: f.size) if faces else None


def verification(eval_dir: Path, detector: L.IndependentYuNet, recognizer: L.Recognizer,
                 styles: tuple[str, ...], sizes: tuple[int, ...], pair_limit: int | None = None) -> list[dict[str, Any]]:
    """A judge that is not a blur: ``images/deepface/master.csv``'s pairs of photos.

    Photo x's face, scaled to S px (raw, or covered in each style), against photo y's face
    at full size. For pairs of one person, the share at the leak line is how often the face
    still gives its wearer away to someone holding another photo of them; for pairs of two
    people it is the recognizer's chance level at that size. ``pair_limit``: the first N
    pairs of each kind only (tests).
    """
    try:
        pairs = L.load_pairs(eval_dir)
    except L.EvalMediaMissing:
        return []
    if pair_limit is not None:
        pairs = [p for p in pairs if p[2]][:pair_limit] + [p for p in pairs if not p[2]][:pair_limit]
    folder = eval_dir / "images" / "deepface"
    photos: dict[str, tuple[np.ndarray, L.Face] | None] = {}
    for name in {n for x, y, _ in pairs for n in (x, y)}:
        path = folder / name
        rgb = L.read_rgb(path) if path.is_file() else None
        face = _largest_face(detector, rgb) if rgb is not None else None
        photos[name] = (rgb, face) if face is not None else None
    full = {n: recognizer.embed(L.align_face(v[0], v[1].kps))[0] for n, v in photos.items() if v is not None}
    rows = []
    for size in sizes:
        small_emb: dict[str, dict[str, np.ndarray]] = {}
        for name, v in photos.items():
            if v is None or v[1].size <= size:
                continue
            small, f = scaled_with_face(v[0], v[1], size)
            m = L.alignment_matrix(f.kps)
            views = {"raw": small, **{s: covered(small, f, s) for s in styles}}
            embs = recognizer.embed(np.stack([L.align_face(img, matrix=m) for img in views.values()]))
            small_emb[name] = dict(zip(views, embs))
        for same in (True, False):
            cos: dict[str, list[float]] = {k: [] for k in ("raw", *styles)}
            for x, y, is_same in pairs:
                if is_same != same or x not in small_emb or y not in full:
                    continue
                for k, e in small_emb[x].items():
                    cos[k].append(float(e @ full[y]))
            n = len(cos["raw"])
            rows.append({
                "face_px": size, "pairs": "same person" if same else "two people", "n": n,
                **{f"at_line_{k}": (round(float(np.mean(np.array(v) >= L.LEAK_COSINE)), 4) if n else None) for k, v in cos.items()},
                **{f"cosine_p50_{k}": (round(float(np.median(v)), 4) if n else None) for k, v in cos.items()},
            })
    return rows


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval-dir", default=None)
    p.add_argument("--styles", default=",".join(COVER_STYLES))
    p.add_argument("--sizes", default=",".join(str(s) for s in DEFAULT_SIZES), help="face sizes to cover at, px")
    p.add_argument("--limit", type=int, default=None, help="first N photos only (tests)")
    p.add_argument("--out", default="bench/out/cover_probe.json")
    args = p.parse_args(argv)
    eval_dir = L.resolve_eval_dir(args.eval_dir)
    styles = tuple(s for s in args.styles.split(",") if s)
    cv2.setNumThreads(1)
    report = run(eval_dir, styles, tuple(int(s) for s in args.sizes.split(",")), DEFAULT_VIEWS, args.limit)
    report["cover_us"] = cover_timings(styles)
    report.update(
        schema=1, created=datetime.datetime.now().isoformat(timespec="seconds"),
        command=" ".join([".venv/bin/python", "bench/cover_probe.py", *(argv if argv is not None else sys.argv[1:])]),
        machine=f"{platform.machine()}, {platform.python_version()}",
        leak_cosine=L.LEAK_COSINE, caveat=CAVEAT,
    )
    print(f"{report['faces_probed']} faces of {MIN_SOURCE_FACE_PX} px and up; a leak is cosine >= {L.LEAK_COSINE}")
    print(f"{'style':9} {'cover px':>8} {'view px':>8} {'faces':>6} {'leaks':>6} {'p50':>6} {'p95':>6} {'max':>6}  worst")
    for r in report["rows"]:
        print(f"{r['style']:9} {r['cover_px']:>8} {r['view_px']:>8} {r['identifiable_faces']:>6} {r['at_leak_line']:>6} "
              f"{r['cosine_p50'] if r['cosine_p50'] is not None else '-':>6} {r['cosine_p95'] if r['cosine_p95'] is not None else '-':>6} "
              f"{r['cosine_max'] if r['cosine_max'] is not None else '-':>6}  {r['worst_image'] or ''}")
    print("caveat:", CAVEAT)
    if report["verification"]:
        keys = ("raw", *styles)
        print("against another photo of the same person (deepface master.csv; share at the line, cosine p50):")
        print(f"{'face px':>7} {'pairs':12} {'n':>4}  " + "  ".join(f"{k:>14}" for k in keys))
        for r in report["verification"]:
            cells = "  ".join(f"{_cell(r['at_line_' + k]):>6} {_cell(r['cosine_p50_' + k]):>7}" for k in keys)
            print(f"{r['face_px']:>7} {r['pairs']:12} {r['n']:>4}  {cells}")
    print("cost of one cover, microseconds p50 / p95 (one thread):")
    for side in TIMING_SIDES:
        cells = "  ".join(f"{r['style']} {r['us_p50']:.0f} / {r['us_p95']:.0f}" for r in report["cover_us"] if r["side_px"] == side)
        print(f"  {side:>4} px: {cells}")
    out = Path(args.out)
    out = out if out.is_absolute() else REPO_ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print("report:", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
