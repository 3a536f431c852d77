"""Harder clips made from ``../shared/eval``: group photos under moving occluders, heads leaving the frame.

The dev videos hold one crowd; these clips put the masker where a group stream or a creator
who leans out of the picture puts it, built from the evaluation's own media so nothing new
enters the repository. The clips and links to the evaluation's models and images land in
an evaluation folder that ``bench/mask_eval.py --eval-dir`` reads like the real one:

    .venv/bin/python bench/synth_clips.py --out bench/out/synth_eval
    .venv/bin/python bench/mask_eval.py --eval-dir bench/out/synth_eval --mode anonymize \\
        --no-expression --no-720p --no-images --sheet none --docs-sheet none --seed 0

- ``group_*``: a group photo fitted into 1280x720, zoomed 1.0 -> 1.2 and swayed, while two
  dark bars (people walking past) cross it in opposite directions;
- ``edge_*``: a talking-head clip fitted into 1280x720 that slides out of one edge of the
  frame until three quarters of its width are gone, and back.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench import eval_lib as L  # noqa: E402
from bench.mask_eval import iter_frames  # noqa: E402

WIDTH, HEIGHT, FRAMES, FPS = 1280, 720, 90, 30
GROUP_PHOTOS = (
    "images/dlib_faces/bald_guys.jpg", "images/insightface/t1.jpg", "images/deepface/selfie-many-people.jpg",
    "images/dlib_faces/2008_004176.jpg", "images/dlib_faces/2007_007763.jpg", "images/dlib_faces/2008_007676.jpg",
)
EDGE_CLIPS = (("lp_s18", "right"), ("vr_2", "bottom"), ("WDA_KatieHill_000", "left"), ("lp_d3", "right"))


@dataclass(frozen=True)
class Bar:
    """A dark vertical occluder crossing the frame."""

    x0: float
    speed: float  # px per frame
    width: int
    colour: tuple[int, int, int]


def group_frame(photo: np.ndarray, i: int, bars: tuple[Bar, ...], rng: np.random.Generator) -> np.ndarray:
    """Frame ``i``: the photo zoomed and swayed, with the bars drawn over it (their texture moves)."""
    h, w = photo.shape[:2]
    t = i / (FRAMES - 1)
    z = min(WIDTH / w, HEIGHT / h) * (1.0 + 0.2 * t)
    dx = (WIDTH - w * z) / 2 + 40 * math.sin(2 * math.pi * t)
    dy = (HEIGHT - h * z) / 2 + 20 * math.cos(2 * math.pi * t)
    m = np.array([[z, 0, dx], [0, z, dy]], np.float32)
    frame = cv2.warpAffine(photo, m, (WIDTH, HEIGHT), flags=cv2.INTER_AREA if z < 1 else cv2.INTER_LINEAR)
    for bar in bars:
        a = max(0, int(bar.x0 + bar.speed * i))
        b = min(WIDTH, int(bar.x0 + bar.speed * i) + bar.width)
        if a < b:
            noise = rng.integers(-12, 12, (HEIGHT, b - a, 1))
            frame[:, a:b] = np.clip(np.array(bar.colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
    return frame


def edge_frame(rgb: np.ndarray, i: int, direction: str) -> np.ndarray:
    """Frame ``i``: the clip's frame fitted into 1280x720, pushed out past ``direction`` and back."""
    h, w = rgb.shape[:2]
    z = min(WIDTH / w, HEIGHT / h) * 0.95
    img = cv2.resize(rgb, (round(w * z), round(h * z)), interpolation=cv2.INTER_AREA)
    ih, iw = img.shape[:2]
    s = math.sin(math.pi * i / (FRAMES - 1))
    dx, dy = (WIDTH - iw) / 2, (HEIGHT - ih) / 2
    if direction == "right":
        dx += s * (WIDTH / 2 + 0.25 * iw)
    elif direction == "left":
        dx -= s * (WIDTH / 2 + 0.25 * iw)
    elif direction == "bottom":
        dy += s * (HEIGHT / 2 + 0.2 * ih)
    else:
        raise ValueError(f"direction must be right, left or bottom, not {direction!r}")
    m = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    return cv2.warpAffine(img, m, (WIDTH, HEIGHT), borderMode=cv2.BORDER_REPLICATE)


def write_clip(path: Path, frames: list[np.ndarray]) -> None:
    """H.264 at CRF 10, so the encoder adds next to nothing the masker has to see through."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "10", "preset": "fast"}
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


def make(eval_dir: Path, out: Path, frames: int = FRAMES) -> list[Path]:
    """Write every clip under ``out/videos`` and link ``out/models`` and ``out/images`` to ``eval_dir``."""
    (out / "videos").mkdir(parents=True, exist_ok=True)
    for name in ("models", "images"):
        link = out / name
        if not link.exists():
            link.symlink_to((eval_dir / name).resolve(), target_is_directory=True)
    written = []
    for k, rel in enumerate(GROUP_PHOTOS):
        rng = np.random.default_rng(k)
        bars = (
            Bar(-150.0, 13.0, 150, tuple(int(c) for c in rng.integers(20, 70, 3))),
            Bar(WIDTH + 10.0, -11.0, 120, tuple(int(c) for c in rng.integers(20, 70, 3))),
        )
        photo = L.read_rgb(eval_dir / rel)
        path = out / "videos" / f"group_{Path(rel).stem.replace('-', '_')}.mp4"
        write_clip(path, [group_frame(photo, i, bars, rng) for i in range(frames)])
        written.append(path)
    for clip, direction in EDGE_CLIPS:
        source = [f.to_ndarray(format="rgb24") for f in iter_frames(eval_dir / "videos" / f"{clip}.mp4", frames, None)]
        path = out / "videos" / f"edge_{clip}_{direction}.mp4"
        write_clip(path, [edge_frame(rgb, i, direction) for i, rgb in enumerate(source)])
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval-dir", default=None)
    p.add_argument("--out", default="bench/out/synth_eval", help="evaluation folder to write (relative to the repository)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out = out if out.is_absolute() else REPO_ROOT / out
    for path in make(L.resolve_eval_dir(args.eval_dir), out):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
