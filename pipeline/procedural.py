"""Procedural personas: faces rendered from a seed and a style, nobody by construction.

``render_procedural(seed, style)`` perturbs MediaPipe's canonical face layout a little
(face width, jaw, chin, eyes, nose, mouth, lips, brows; symmetric but for a touch of
noise) and paints a frontal face over it with OpenCV: skin lit by the canonical mesh's
normals, cheeks, eyes inside the eye loops, brows along the brow landmarks, nose shading
and nostrils, lips between the outer and the inner lip loops (mouth closed). The same
seed, style and size give byte-identical textures and landmarks (a private
``numpy.random.Generator``; no global state).

Styles: ``soft`` (smooth gradients, gentle features), ``sharp`` (contrast, angular brows
and jaw, defined lines), ``anime`` (flat cel shading, large eyes, dark outlines, tiny nose
and mouth), ``ink`` (a monochrome ink-wash portrait: sharp shapes, tinted greys) and
``sculpted`` (soft, then lit as a whole by its own relief: the canonical face's per-pixel
depth plus the seed's bones and hollows, sockets in shade, nose bridge and forehead in the
light). In a low-resolution view a face recognizer matches a creator under a flat-lit
persona by what it leaves around it (hair, outline); under a sculpted one it mostly does
not. In crowds at full resolution the same relief makes small anonymized faces score closer
to the people under them, so anonymize mode draws flat faces there and sculpted ones only in
small streams (``ephemeral_persona(low_resolution=True)``; docs/benchmarks.md, "The sculpted
style" and "Anonymize mode in small streams").
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from typing import Callable, NamedTuple

import cv2
import numpy as np

from pipeline.persona import Persona, canonical_layout, canonical_vertices, face_mesh_topology
from pipeline.swap import rasterize_affine

STYLES: tuple[str, ...] = ("soft", "sharp", "anime", "ink", "sculpted")
MAX_SEED = 2**63 - 1


class BuiltinPersona(NamedTuple):
    id: str
    name: str
    seed: int
    style: str


BUILTIN_PERSONAS: tuple[BuiltinPersona, ...] = (
    # first: the one to pick for a low-resolution stream (docs/benchmarks.md, "The sculpted
    # built-in"); its seed was chosen among four measured sculpted draws
    BuiltinPersona("builtin-sculpted", "Aki", 808, "sculpted"),
    BuiltinPersona("builtin-soft", "Sora", 101, "soft"),
    BuiltinPersona("builtin-sharp", "Ren", 202, "sharp"),
    BuiltinPersona("builtin-anime", "Hikari", 303, "anime"),
    BuiltinPersona("builtin-ink", "Sumi", 404, "ink"),
)

# Upper edges of the brows (MediaPipe's second eyebrow polylines), outer end first.
_BROW_UPPER = {"left": [300, 293, 334, 296, 336], "right": [70, 63, 105, 66, 107]}

# Skin tones from very light to very dark (RGB), sampled along this ramp.
_SKIN_RAMP = np.array(
    [
        [250, 222, 200],
        [240, 200, 172],
        [226, 178, 144],
        [204, 150, 112],
        [176, 120, 84],
        [140, 92, 62],
        [104, 66, 44],
        [76, 48, 34],
    ],
    np.float32,
)
_ANIME_SKIN = np.array([[255, 236, 224], [252, 226, 206], [245, 212, 186], [226, 184, 150], [190, 140, 104]], np.float32)
_EYE_COLOURS = np.array(
    [
        [66, 40, 22],  # dark brown
        [96, 60, 30],  # brown
        [120, 88, 40],  # hazel
        [150, 112, 52],  # amber
        [70, 110, 70],  # green
        [80, 120, 150],  # blue
        [60, 90, 140],  # deep blue
        [112, 122, 130],  # grey
    ],
    np.float32,
)
_EYE_WEIGHTS = np.array([0.3, 0.22, 0.12, 0.06, 0.08, 0.1, 0.06, 0.06])
_ANIME_EYES = np.array(
    [[70, 120, 220], [150, 70, 200], [40, 160, 150], [200, 60, 80], [220, 160, 40], [90, 180, 90], [60, 60, 90]],
    np.float32,
)
_HAIR = np.array(
    [[22, 18, 16], [44, 30, 22], [72, 48, 30], [110, 70, 40], [150, 80, 44], [190, 150, 96], [222, 196, 140], [150, 146, 142]],
    np.float32,
)
_HAIR_WEIGHTS = np.array([0.26, 0.22, 0.16, 0.1, 0.07, 0.08, 0.05, 0.06])
_ANIME_HAIR = np.array(
    [[40, 40, 60], [230, 200, 120], [120, 70, 150], [220, 120, 150], [60, 110, 200], [200, 70, 60], [235, 235, 240]],
    np.float32,
)
_SYLLABLES = ("ka", "mi", "ro", "sa", "ne", "lo", "ta", "ri", "en", "yu", "ha", "no", "ve", "ti", "ma", "ko", "ai", "ze")


class _Style(NamedTuple):
    blur: float  # shading blur (px at 512)
    ambient: float  # shading floor
    contrast: float
    lines: float  # strength of drawn lines (lids, lip edge)
    cel: bool
    eye_y: tuple[float, float]  # eye opening scale
    eye_x: tuple[float, float]
    nose_x: tuple[float, float]
    mouth_x: tuple[float, float]
    lips: tuple[float, float]  # lip fullness
    jaw: tuple[float, float]  # lower-face width change
    brow: tuple[float, float]  # brow thickness
    skin_noise: float
    relief: float  # how much of its own relief's light the face takes (0: none)


_STYLES: dict[str, _Style] = {
    "soft": _Style(9.0, 0.58, 0.9, 0.45, False, (1.12, 1.38), (0.96, 1.06), (0.9, 1.06), (0.92, 1.05), (0.95, 1.3), (-0.08, 0.0), (0.5, 0.8), 1.6, 0.0),
    "sharp": _Style(5.0, 0.32, 1.22, 1.0, False, (1.05, 1.3), (0.95, 1.06), (0.94, 1.14), (0.94, 1.1), (0.85, 1.2), (0.0, 0.08), (0.7, 1.05), 3.0, 0.0),
    "anime": _Style(2.0, 0.75, 1.0, 1.0, True, (1.75, 2.05), (1.08, 1.16), (0.7, 0.8), (0.7, 0.8), (0.8, 0.9), (-0.14, -0.07), (0.35, 0.5), 0.0, 0.0),
    "ink": _Style(4.5, 0.3, 1.3, 1.0, False, (1.05, 1.3), (0.95, 1.05), (0.92, 1.1), (0.92, 1.08), (0.9, 1.2), (-0.04, 0.05), (0.6, 1.0), 4.0, 0.0),
}
_STYLES["sculpted"] = _STYLES["soft"]._replace(relief=1.0)  # soft, lit by its own relief


# -- arguments ----------------------------------------------------------------------------


def _check(seed: int, style: str, size: int) -> None:
    if style not in _STYLES:
        raise ValueError(f"unknown persona style {style!r}; expected one of {', '.join(STYLES)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"persona seed must be an integer in 0..2**63-1, not {seed!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"persona seed must be in 0..2**63-1, got {seed}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 64 <= int(size) <= 4096:
        raise ValueError(f"persona texture size must be an integer in 64..4096, got {size!r}")


def _rng(seed: int, style: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(style.encode())]))


def _pick(rng: np.random.Generator, table: np.ndarray, weights: np.ndarray | None = None, tint: float = 0.08) -> np.ndarray:
    """An entry of ``table``, a little brighter or darker and a little tinted."""
    i = rng.choice(len(table), p=weights)
    return table[i] * np.float32(rng.uniform(0.92, 1.06)) * rng.uniform(1.0 - tint, 1.0 + tint, 3).astype(np.float32)


def _name(rng: np.random.Generator) -> str:
    n = int(rng.integers(2, 4))
    return "".join(_SYLLABLES[int(rng.integers(len(_SYLLABLES)))] for _ in range(n)).capitalize()


# -- the layout ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _static() -> dict:
    topo = face_mesh_topology()
    v = canonical_vertices().astype(np.float64)
    tri = topo.triangles
    q = v[tri]
    n = np.cross(q[:, 1] - q[:, 0], q[:, 2] - q[:, 0])
    n *= np.where(n[:, 2:3] < 0, -1.0, 1.0)
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    z = v[tri][:, :, 2].mean(axis=1)
    li = list(topo.lips_inner)
    h = len(li) // 2
    return {
        "topo": topo,
        "normals": n,
        "tri_z": (z - z.min()) / (z.max() - z.min()),
        "z_order": np.argsort(z, kind="stable"),
        "inner_lower": np.array(li[: h + 1]),
        "inner_upper": np.array([li[0], *li[len(li) - 1 : h : -1], li[h]]),
    }


def _scale_about(p: np.ndarray, centre: np.ndarray, sigma: float, kx: float, ky: float) -> None:
    """Scale points about ``centre`` by (kx, ky), fading with a Gaussian of ``sigma`` (in place)."""
    d = p - centre
    w = np.exp(-(d**2).sum(axis=1) / (2.0 * sigma * sigma))
    p += d * (np.array([kx - 1.0, ky - 1.0]) * w[:, None])


def _perturb(layout: np.ndarray, rng: np.random.Generator, st: _Style, f: float) -> np.ndarray:
    s = _static()
    topo = s["topo"]
    p = layout.astype(np.float64).copy()
    cx = float(p[topo.face_oval, 0].mean())
    y_nose, y_mouth, y_chin = p[4, 1], p[13, 1], p[152, 1]
    a = lambda: rng.uniform(-1.0, 1.0) * 0.015  # noqa: E731 - a touch of asymmetry

    # face width, cheekbones, jaw, chin
    kw = rng.uniform(0.95, 1.05)
    p[:, 0] = cx + (p[:, 0] - cx) * kw
    kcb = rng.uniform(-0.03, 0.04)
    bump = np.exp(-(((p[:, 1] - p[117, 1]) / (60 * f)) ** 2))
    p[:, 0] = cx + (p[:, 0] - cx) * (1.0 + kcb * bump)
    kj = rng.uniform(*st.jaw)
    wj = np.clip((p[:, 1] - y_nose) / (y_chin - y_nose), 0.0, 1.0)
    p[:, 0] = cx + (p[:, 0] - cx) * (1.0 + kj * np.sin(np.pi * 0.5 * wj) * (1.0 - 0.3 * wj))
    kc = rng.uniform(-8.0, 10.0) * f
    p[:, 1] += kc * np.clip((p[:, 1] - y_mouth) / (y_chin - y_mouth), 0.0, 1.0)

    # eyes: size and spacing, mirrored
    ky, kx, dx = rng.uniform(*st.eye_y), rng.uniform(*st.eye_x), rng.uniform(-4.0, 4.0) * f
    for loop, side in ((topo.left_eye, 1.0), (topo.right_eye, -1.0)):
        c = p[loop].mean(axis=0)
        width = float(np.ptp(p[loop, 0]))
        _scale_about(p, c, 0.75 * width, kx + a(), ky + a())
        d = p - c
        p[:, 0] += side * dx * np.exp(-(d**2).sum(axis=1) / (2.0 * (0.8 * width) ** 2))

    # brows: height and arch
    dy, arch = rng.uniform(-6.0, 4.0) * f, rng.uniform(-1.0, 4.0) * f
    for lower, side in ((topo.left_eyebrow, "left"), (topo.right_eyebrow, "right")):
        idx = list(lower) + _BROW_UPPER[side]
        c = p[idx].mean(axis=0)
        d = p - c
        w = np.exp(-(d**2).sum(axis=1) / (2.0 * (26.0 * f) ** 2))
        mid = np.exp(-((d[:, 0] - (5.0 * f if side == "left" else -5.0 * f)) ** 2) / (2.0 * (12.0 * f) ** 2))  # peak outwards
        p[:, 1] += w * (dy - arch * mid)

    # nose: width and length
    kn = rng.uniform(*st.nose_x)
    _scale_about(p, p[4].copy(), 30.0 * f, kn, 1.0)
    dn = rng.uniform(-4.0, 5.0) * f
    d = p - p[2]
    p[:, 1] += dn * np.exp(-(d**2).sum(axis=1) / (2.0 * (18.0 * f) ** 2))

    # mouth: width and lip fullness
    lo = list(topo.lips_outer)
    c = p[lo].mean(axis=0)
    mw = float(np.ptp(p[lo, 0]))
    _scale_about(p, c, 0.55 * mw, rng.uniform(*st.mouth_x), rng.uniform(*st.lips))
    # the texture's mouth is closed: bring the inner lips together (keep the loop valid)
    up, low = s["inner_upper"], s["inner_lower"]
    mid = 0.5 * (p[up] + p[low])
    p[up] = mid + (p[up] - mid) * 0.35
    p[low] = mid + (p[low] - mid) * 0.35
    return p.astype(np.float32)


# -- relief: the face's depth, lit -----------------------------------------------------------

# The seed's bones and hollows, as depth bumps at face-mesh landmarks: (landmarks, +1
# raised or -1 sunken, width in face widths, height range in face widths).
_RELIEF_BUMPS: tuple[tuple[tuple[int, ...], float, float, tuple[float, float]], ...] = (
    ((116, 345), +1.0, 0.09, (0.01, 0.05)),  # cheekbones
    ((50, 280), +1.0, 0.10, (0.0, 0.04)),  # cheeks
    ((6, 197), +1.0, 0.05, (0.0, 0.03)),  # nose bridge
    ((4,), +1.0, 0.05, (0.0, 0.03)),  # nose tip
    ((105, 334), +1.0, 0.08, (0.0, 0.035)),  # brow ridge
    ((159, 386), -1.0, 0.06, (0.005, 0.03)),  # eye sockets
    ((54, 284), -1.0, 0.10, (0.0, 0.04)),  # temples
    ((187, 411), -1.0, 0.07, (0.0, 0.035)),  # hollows under the cheekbones
    ((152,), +1.0, 0.07, (0.0, 0.03)),  # chin
    ((151,), +1.0, 0.12, (0.0, 0.03)),  # forehead
    ((205, 425), -1.0, 0.035, (0.0, 0.02)),  # nasolabial folds
    ((18,), -1.0, 0.04, (0.0, 0.02)),  # below the lower lip
)

_WRAP = 0.8  # wrapped Lambert: how far light reaches past the terminator, as through skin
_CAVITY_FLOOR = 0.85  # the darkest a hollow gets from occlusion alone
_EDGE_FADE = (0.12, 0.65)  # over this share of the face width the relief fades to this much at the edge
_LIT_RANGE = (0.3, 1.6)  # the relief's light relative to the face's mean
_SHADOW_GAMMA = (0.8, 1.0, 1.1)  # per channel (RGB): shade keeps more red, as light scattered under skin does
_EYE_LIT = 0.9  # the eyeballs catch light the socket around them does not: the whites stay white


def _relief_shading(
    p: np.ndarray, inside: np.ndarray, face_w: float, light: np.ndarray, ambient: float, blur: float, rng: np.random.Generator
) -> np.ndarray:
    """Light on the face's relief (HxW float32, about 0.2..1.2; ``p`` in the image's pixels).

    Depth: MediaPipe's canonical face, scaled to this layout, plus this seed's bumps.
    Shading: a key light and a weaker fill from the other side on smooth per-pixel normals,
    darkened in the hollows, and flattened towards the face's edge so that the swap's
    feathered border shows no dark rim.
    """
    s = _static()
    v = canonical_vertices().astype(np.float64)
    oval = list(s["topo"].face_oval)
    z = v[:, 2] * (face_w / float(np.ptp(v[oval, 0])))
    h, w = inside.shape
    order = s["z_order"]  # far to near: where triangles overlap the nearer one wins
    tri = s["topo"].triangles[order]
    values, covered = rasterize_affine(p[tri], z[tri][:, :, None], w, h)
    depth = np.where(covered, values[:, 0], 0.0).reshape(h, w).astype(np.float32)
    for ids, sign, sigma, (lo, hi) in _RELIEF_BUMPS:
        amp = sign * rng.uniform(lo, hi) * face_w
        for i in ids:
            sg = sigma * face_w * rng.uniform(0.8, 1.25)
            a = amp * rng.uniform(0.85, 1.15)
            cx, cy = p[i]
            x0, x1 = max(0, int(cx - 3 * sg)), min(w, int(cx + 3 * sg) + 1)
            y0, y1 = max(0, int(cy - 3 * sg)), min(h, int(cy + 3 * sg) + 1)
            if x0 >= x1 or y0 >= y1:
                continue
            gx = np.exp(-((np.arange(x0, x1) - cx) ** 2) / (2 * sg * sg))
            gy = np.exp(-((np.arange(y0, y1) - cy) ** 2) / (2 * sg * sg))
            depth[y0:y1, x0:x1] += (a * np.outer(gy, gx) * inside[y0:y1, x0:x1]).astype(np.float32)
    # carry the edge's depth on outside the face, then smooth away the triangles' facets
    fin = inside.astype(np.float32)
    sig = 0.04 * face_w
    outer = cv2.GaussianBlur(depth, (0, 0), sig) / np.maximum(cv2.GaussianBlur(fin, (0, 0), sig), 1e-3)
    depth = cv2.GaussianBlur(np.where(inside, depth, outer).astype(np.float32), (0, 0), 0.02 * face_w)
    gx = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    norm = np.sqrt(gx * gx + gy * gy + 1.0)
    key = np.array([light[0], -light[1], light[2]], np.float32)  # the image's y points down
    fill = np.array([-light[0], 0.1, 1.0], np.float32)
    fill /= np.linalg.norm(fill)

    def wrapped(lv: np.ndarray) -> np.ndarray:  # Lambert wrapped past the terminator, as through skin
        return np.clip(((lv[2] - gx * lv[0] - gy * lv[1]) / norm + _WRAP) / (1.0 + _WRAP), 0.0, 1.0)

    lit = (wrapped(key) + 0.3 * wrapped(fill)) / 1.3
    cavity = depth - cv2.GaussianBlur(depth, (0, 0), 0.06 * face_w)
    shade = (ambient + (1.0 - ambient) * lit) * np.clip(1.0 + cavity / (0.02 * face_w), _CAVITY_FLOOR, 1.1)
    mean = float(shade[inside].mean())
    edge = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 5) / (_EDGE_FADE[0] * face_w)
    edge = np.clip(edge, 0.0, 1.0)
    keep = _EDGE_FADE[1] + (1.0 - _EDGE_FADE[1]) * edge * edge * (3.0 - 2.0 * edge)
    shade = mean + (shade - mean) * keep
    # outside the face the light fades to the mean within a few pixels: the swap blends only a
    # thin band there, and hair, neck and backdrop keep their own shading
    out = cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, 5)
    shade = np.where(inside, shade, mean + (np.minimum(shade, mean) - mean) * np.exp(-out / (0.02 * face_w)))
    return cv2.GaussianBlur(shade.astype(np.float32), (0, 0), max(0.5, blur))


# -- painting helpers ---------------------------------------------------------------------


def _fx(pts: np.ndarray, off: tuple[int, int] = (0, 0)) -> np.ndarray:
    return np.round((np.asarray(pts, np.float64) - off) * 16.0).astype(np.int32)


def _box(pts: np.ndarray, pad: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    h, w = shape[:2]
    x0 = int(max(0, np.floor(pts[:, 0].min() - pad)))
    y0 = int(max(0, np.floor(pts[:, 1].min() - pad)))
    x1 = int(min(w, np.ceil(pts[:, 0].max() + pad) + 1))
    y1 = int(min(h, np.ceil(pts[:, 1].max() + pad) + 1))
    return x0, y0, x1, y1


def _stamp(
    img: np.ndarray,
    box: tuple[int, int, int, int],
    draw: Callable[[np.ndarray, tuple[int, int]], None],
    colour: np.ndarray | tuple[float, float, float],
    alpha: float = 1.0,
    blur: float = 0.0,
) -> np.ndarray | None:
    """Blend ``colour`` into ``img`` through the mask that ``draw(mask, offset)`` paints in box."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return None
    m = np.zeros((y1 - y0, x1 - x0), np.float32)
    draw(m, (x0, y0))
    if blur > 0:
        m = cv2.GaussianBlur(m, (0, 0), blur)
    sub = img[y0:y1, x0:x1]
    sub += (np.asarray(colour, np.float32) - sub) * (m[..., None] * alpha)
    return m


def _poly(pts: np.ndarray) -> Callable[[np.ndarray, tuple[int, int]], None]:
    return lambda m, off: cv2.fillPoly(m, [_fx(pts, off)], 1.0, cv2.LINE_AA, 4)


def _line(pts: np.ndarray, thick: float, closed: bool = False) -> Callable[[np.ndarray, tuple[int, int]], None]:
    t = max(1, int(round(thick)))
    return lambda m, off: cv2.polylines(m, [_fx(pts, off)], closed, 1.0, t, cv2.LINE_AA, 4)


def _ellipse(c: np.ndarray, axes: tuple[float, float], angle: float = 0.0) -> Callable[[np.ndarray, tuple[int, int]], None]:
    def draw(m: np.ndarray, off: tuple[int, int]) -> None:
        cc = _fx(np.asarray(c, np.float64)[None], off)[0]
        ax = (max(1, int(round(axes[0] * 16))), max(1, int(round(axes[1] * 16))))
        cv2.ellipse(m, (int(cc[0]), int(cc[1])), ax, angle, 0, 360, 1.0, -1, cv2.LINE_AA, 4)

    return draw


def _smooth_curve(pts: np.ndarray, n: int = 24) -> np.ndarray:
    """Catmull-Rom through ``pts`` (k x 2), n samples."""
    p = np.concatenate([pts[:1], pts, pts[-1:]]).astype(np.float64)
    t = np.linspace(0, len(pts) - 1, n)
    i = np.minimum(t.astype(int), len(pts) - 2)
    u = (t - i)[:, None]
    p0, p1, p2, p3 = p[i], p[i + 1], p[i + 2], p[i + 3]
    return 0.5 * (2 * p1 + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * u**3)


# -- the renderer -------------------------------------------------------------------------


def render_procedural(
    seed: int,
    style: str,
    *,
    size: int = 512,
    persona_id: str | None = None,
    name: str | None = None,
    kind: str = "procedural",
) -> Persona:
    """A procedural persona: ``seed`` (0..2**63-1) and ``style`` (one of ``STYLES``) fix the face."""
    _check(seed, style, size)
    seed, size = int(seed), int(size)
    st = _STYLES[style]
    rng = _rng(seed, style)
    f = size / 512.0
    s = _static()
    topo = s["topo"]

    # -- the person
    anime = style == "anime"
    gentle = style in ("soft", "sculpted")  # the soft style's lines and blurs (sculpted is soft, relit)
    if anime:
        skin = _pick(rng, _ANIME_SKIN, tint=0.015)
        iris = _pick(rng, _ANIME_EYES)
        hair = _pick(rng, _ANIME_HAIR)
    else:
        t = rng.beta(1.1, 1.3) * (len(_SKIN_RAMP) - 1)
        i = min(int(t), len(_SKIN_RAMP) - 2)
        skin = _SKIN_RAMP[i] + (_SKIN_RAMP[i + 1] - _SKIN_RAMP[i]) * (t - i)
        undertone = rng.uniform(-1.0, 1.0)  # pink <-> olive
        skin = skin + np.array([4.0, -2.0, 2.0], np.float32) * undertone * 2.0 + rng.normal(0, 3.0, 3).astype(np.float32)
        iris = _pick(rng, _EYE_COLOURS, _EYE_WEIGHTS)
        hair = _pick(rng, _HAIR, _HAIR_WEIGHTS)
    skin = np.clip(skin, 20, 255).astype(np.float32)
    lum = float(skin @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0
    lip_tint = np.array([rng.uniform(150, 200), rng.uniform(50, 90), rng.uniform(60, 100)], np.float32)
    lips = np.clip(skin * rng.uniform(0.62, 0.8) + (lip_tint * (0.4 + 0.6 * lum) - skin * 0.7) * rng.uniform(0.35, 0.7), 15, 255)
    brow_col = np.clip(hair * 0.75 + skin * (0.15 if hair.mean() > 140 else 0.05), 5, 255)
    if anime:
        lips = skin * np.array([0.92, 0.72, 0.72], np.float32)
        brow_col = hair * 0.6
    backdrop = np.array(rng.uniform(70, 190, 3), np.float32)

    p = _perturb(canonical_layout(size), rng, st, f)
    oval = p[topo.face_oval]
    centre = oval.mean(axis=0)
    face_w, face_h = float(np.ptp(oval[:, 0])), float(np.ptp(oval[:, 1]))

    # -- shading: Lambert over the canonical mesh's normals, lit from above and a side.
    # The base (shading, hair, neck, backdrop) is smooth: paint it at half size.
    light = np.array([rng.uniform(-0.5, 0.5), rng.uniform(0.25, 0.6), 1.0])
    light /= np.linalg.norm(light)
    tri_shade = st.ambient + (1.0 - st.ambient) * np.clip(s["normals"] @ light, 0.0, 1.0)
    tri_shade *= 0.9 + 0.1 * s["tri_z"]
    mean_shade = float(tri_shade.mean())
    hs = max(32, size // 2)
    hf = hs / size
    half = lambda q: (np.asarray(q, np.float64) + 0.5) * hf - 0.5  # noqa: E731
    ring = centre + (oval - centre) * 1.16
    shade = np.zeros((hs, hs), np.float32)
    inside = np.zeros((hs, hs), np.float32)
    cv2.fillPoly(shade, [_fx(half(oval))], mean_shade, cv2.LINE_8, 4)
    cv2.fillPoly(inside, [_fx(half(oval))], 1.0, cv2.LINE_8, 4)
    tris = _fx(half(p[topo.triangles]))
    for k in s["z_order"]:
        cv2.fillConvexPoly(shade, tris[k], float(tri_shade[k]), cv2.LINE_8, 4)
    # outside the oval, continue the shading of the face's edge (no halo in the feather band)
    sig = 0.06 * face_w * hf
    ext = cv2.GaussianBlur(shade, (0, 0), sig) / np.maximum(cv2.GaussianBlur(inside, (0, 0), sig), 1e-3)
    shade = np.where(inside > 0, shade, np.minimum(ext, mean_shade)).astype(np.float32)
    shade = cv2.GaussianBlur(shade, (0, 0), max(0.5, st.blur * f * hf))
    if st.cel:
        thr = float(np.quantile(tri_shade, 0.3))
        shade = np.where(shade > thr, 1.0, 0.86).astype(np.float32)
        shade = cv2.GaussianBlur(shade, (0, 0), 0.6)
        hl = np.zeros_like(shade)
    else:
        shade = mean_shade + (shade - mean_shade) * (st.contrast * 1.6)
        hl = np.clip((shade - 1.0) * 4.0, 0.0, 1.0)
        shade = np.clip(shade, 0.0, 1.0)
    shadow = skin * np.array([0.58, 0.46, 0.46], np.float32)
    high = np.minimum(skin * 1.1 + 12.0, 255.0)
    # skin = shadow + (skin - shadow) * shade + (high - skin) * hl, as one colour transform
    m = np.stack([skin - shadow, high - skin, shadow], axis=1).astype(np.float32)
    face = cv2.transform(np.dstack([shade, hl]), m)

    # -- hair, neck and backdrop outside the face (the swap uses the oval plus a thin band)
    outside = np.empty((hs, hs, 3), np.float32)
    outside[:] = backdrop
    hc, hx, hy = half(centre), 0.66 * face_w * hf, 0.62 * face_h * hf
    top = hc[1] - 0.12 * face_h * hf
    cv2.ellipse(outside, (int(hc[0]), int(top)), (int(hx), int(hy)), 0, 180, 360, hair.tolist(), -1, cv2.LINE_AA)
    cv2.rectangle(outside, (int(hc[0] - hx), int(top)), (int(hc[0] + hx), int(hc[1] + 0.2 * face_h * hf)), hair.tolist(), -1)
    nx = 0.3 * face_w * hf
    cv2.rectangle(outside, (int(hc[0] - nx), int(hc[1])), (int(hc[0] + nx), hs), (skin * 0.7).tolist(), -1)
    outside = cv2.GaussianBlur(outside, (0, 0), 1.2 * f)
    w = np.zeros((hs, hs), np.float32)
    cv2.fillPoly(w, [_fx(half(ring))], 1.0, cv2.LINE_AA, 4)
    w = cv2.GaussianBlur(w, (0, 0), 1.0 * f)
    base = cv2.blendLinear(face, outside, w, 1.0 - w)

    # -- skin texture: mottling and fine grain (one multiplicative pass), freckles
    if st.skin_noise > 0:
        low = rng.standard_normal((size // 32 + 2, size // 32 + 2)).astype(np.float32)
        low = cv2.resize(low, (hs, hs), interpolation=cv2.INTER_CUBIC)
        base *= (1.0 + 0.008 * st.skin_noise * low)[..., None]
    img = cv2.resize(base, (size, size), interpolation=cv2.INTER_LINEAR)
    if st.skin_noise > 0:
        grain = rng.random((size, size), dtype=np.float32)
        grain = 1.0 + (grain - 0.5) * (st.skin_noise * 3.4 / max(float(skin.mean()), 40.0))
        img *= grain[..., None]
        if lum > 0.55 and rng.random() < 0.25:
            n = int(rng.integers(30, 90))
            cxy = p[[50, 280, 4]]
            pts = cxy[rng.integers(0, 3, n)] + rng.normal(0, 22 * f, (n, 2))
            radii = rng.uniform(1.0, 2.2, n) * f
            box = _box(pts, 8 * f, img.shape)

            def dots(m: np.ndarray, off: tuple[int, int]) -> None:
                for c, r in zip(_fx(pts, off), radii):
                    cv2.circle(m, (int(c[0]), int(c[1])), max(1, int(r * 16)), 1.0, -1, cv2.LINE_AA, 4)

            _stamp(img, box, dots, skin * 0.72, 0.5, 0.8 * f)

    # -- cheeks
    blush = np.array([220, 90, 100], np.float32) * (0.5 + 0.5 * lum)
    for a, b in ((50, 205), (280, 425)):
        c = 0.5 * (p[a] + p[b])
        r = 0.09 * face_w
        if anime:
            _stamp(img, _box(c[None], 2 * r, img.shape), _ellipse(c, (r * 1.2, r * 0.55)), (255, 150, 160), 0.35, 2.5 * f)
            for k in (-1, 0, 1):
                q = np.array([[c[0] + k * 0.45 * r - 0.15 * r, c[1] + 0.2 * r], [c[0] + k * 0.45 * r + 0.15 * r, c[1] - 0.2 * r]])
                _stamp(img, _box(q, 3, img.shape), _line(q, 1.5 * f), (225, 110, 120), 0.6)
        else:
            amt = rng.uniform(0.08, 0.22) if gentle else rng.uniform(0.04, 0.14)
            _stamp(img, _box(c[None], 2.5 * r, img.shape), _ellipse(c, (r, r * 0.75)), blush, amt, 0.6 * r)
    if style in ("sharp", "ink"):
        for a, b in ((117, 205), (346, 425)):  # hollow under the cheekbone
            q = np.array([p[a] + (p[b] - p[a]) * 0.2, p[b] + (p[b] - p[a]) * 0.4])
            q[:, 1] += 0.04 * face_h
            _stamp(img, _box(q, 0.08 * face_w, img.shape), _line(q, 0.035 * face_w), shadow, 0.3, 0.035 * face_w)

    # -- nose
    nose_dark = shadow * 0.75
    if anime:
        q = np.array([p[1] + (p[4] - p[1]) * 0.1, p[1] + np.array([-3.0 * f, 2.0 * f])])
        _stamp(img, _box(q, 4, img.shape), _line(q, 1.6 * f), shadow * 0.8, 0.8)
    else:
        for a, b in ((98, 2), (327, 2)):
            c = p[a] + (p[b] - p[a]) * 0.42 + np.array([0.0, -1.5 * f])
            ax = (0.24 * float(np.linalg.norm(p[b] - p[a])) + 1.0 * f, 2.3 * f)
            ang = float(np.degrees(np.arctan2(p[b, 1] - p[a, 1], p[b, 0] - p[a, 0])))
            _stamp(img, _box(c[None], 12 * f, img.shape), _ellipse(c, ax, ang), nose_dark * 0.6, 0.85, 1.2 * f)
        for side in ((198, 209, 129), (420, 429, 358)):  # the alar crease
            q = _smooth_curve(p[list(side)], 10)
            _stamp(img, _box(q, 6 * f, img.shape), _line(q, 2.0 * f), nose_dark, 0.25 * st.lines, 1.5 * f)
        _stamp(img, _box(p[[4]], 10 * f, img.shape), _ellipse(p[4] + [0, -2 * f], (6 * f, 4 * f)), high, 0.25, 3.0 * f)

    # -- lips (closed): fill between the outer loop and the seam, shade, highlight
    lo = p[topo.lips_outer]
    mouth_w = float(np.ptp(lo[:, 0]))
    seam = 0.5 * (p[s["inner_upper"]] + p[s["inner_lower"]])
    lbox = _box(lo, 6 * f, img.shape)
    if anime:
        c = seam[len(seam) // 2]
        q = np.array([c + [-0.22 * mouth_w, -1.0 * f], c + [0.0, 1.0 * f], c + [0.22 * mouth_w, -1.0 * f]])
        _stamp(img, lbox, _line(_smooth_curve(q, 9), 2.0 * f), shadow * 0.5, 0.9)
    else:
        edge_blur = (1.4 if gentle else 0.7) * f
        _stamp(img, lbox, _poly(lo), lips, 0.92, edge_blur)
        upper_poly = np.concatenate([lo[[0]], lo[19:10:-1], lo[[10]], seam[::-1]])
        _stamp(img, lbox, _poly(upper_poly), lips * 0.8, 0.7, edge_blur)
        c = 0.5 * (seam[len(seam) // 2] + lo[5])
        _stamp(img, lbox, _ellipse(c, (0.18 * mouth_w, 0.05 * mouth_w)), np.minimum(lips * 1.3 + 20, 255), 0.35, 2.5 * f)
        # the line between the lips: a smooth curve, fading out towards the corners (a
        # mouth that opens stretches the corners; a dark corner would streak)
        xl, xr = float(seam[0, 0]), float(seam[-1, 0])
        coeff = np.polyfit(seam[:, 0] - 0.5 * (xl + xr), seam[:, 1], 2)
        sx = np.linspace(xl, xr, 32)
        curve = np.stack([sx, np.polyval(coeff, sx - 0.5 * (xl + xr))], axis=1)

        def seam_line(m: np.ndarray, off: tuple[int, int]) -> None:
            _line(curve, 1.6 * f)(m, off)
            cols = np.arange(m.shape[1], dtype=np.float32) + off[0]
            m *= np.clip(np.minimum(cols - xl, xr - cols) / (0.15 * (xr - xl)), 0.0, 1.0)[None, :]

        _stamp(img, lbox, seam_line, lips * 0.35, 0.9, 0.6 * f)
        if st.lines > 0.6:
            _stamp(img, lbox, _line(lo, 1.2 * f, True), lips * 0.6, 0.3 * st.lines, 0.5 * f)

    # -- brows
    bw = rng.uniform(*st.brow)
    brow_arch_peak = rng.uniform(0.55, 0.75)
    for lower, side in ((topo.left_eyebrow, "left"), (topo.right_eyebrow, "right")):
        lower_pts = p[list(lower)].astype(np.float64)  # outer -> inner
        upper_pts = p[_BROW_UPPER[side]].astype(np.float64)
        taper = np.array([0.35, 0.7, 0.95, 1.0, 1.0])
        up = lower_pts + (upper_pts - lower_pts) * (bw * taper)[:, None]
        if style in ("sharp", "ink"):
            # angular: a peak two thirds of the way out
            k = int(round((1.0 - brow_arch_peak) * 4))
            up[k, 1] -= 3.0 * f
            lw, uw = lower_pts, up
        else:
            lw, uw = _smooth_curve(lower_pts, 16), _smooth_curve(up, 16)
        poly = np.concatenate([lw, uw[::-1]])
        box = _box(poly, 8 * f, img.shape)
        if anime:
            _stamp(img, box, _poly(poly), brow_col, 0.95, 0.6 * f)
        else:
            m = _stamp(img, box, _poly(poly), brow_col, 0.0, (1.8 if gentle else 0.7) * f)
            if m is not None:
                x0, y0, x1, y1 = box
                hairs = 0.75 + 0.25 * rng.random(m.shape, dtype=np.float32)
                hairs = cv2.GaussianBlur(hairs, (0, 0), sigmaX=1.5 * f, sigmaY=0.4 * f)
                a = (m * np.clip(hairs * 1.2, 0, 1) * (0.8 if gentle else 0.92))[..., None]
                img[y0:y1, x0:x1] += (brow_col - img[y0:y1, x0:x1]) * a

    # -- eyes, drawn inside the eye loops
    lash = np.minimum(hair, 60) * 0.6 if not anime else np.array([30, 20, 25], np.float32)
    sclera = np.array([238, 232, 226], np.float32) if not anime else np.array([252, 252, 255], np.float32)
    glint_side = -1.0 if light[0] < 0 else 1.0
    for loop in (topo.left_eye, topo.right_eye):
        e = p[list(loop)].astype(np.float64)
        outer, inner = e[0], e[8]
        eye_w = float(np.linalg.norm(outer - inner))
        upper_lid = np.concatenate([e[8:], e[:1]])  # inner corner -> outer corner, over the top
        lower_lid = e[:9]
        top, bot = e[12], e[4]
        eye_h = float(bot[1] - top[1])
        c = np.array([0.5 * (outer[0] + inner[0]), top[1] + 0.52 * eye_h])
        box = _box(e, 0.3 * eye_w, img.shape)
        x0, y0, x1, y1 = box
        hh, ww = y1 - y0, x1 - x0
        layer = np.empty((hh, ww, 3), np.float32)
        layer[:] = sclera
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        # sclera shading: darker at the corners and under the upper lid
        dxn = np.abs(xx - c[0]) / (0.5 * eye_w)
        dyn = np.clip((yy - top[1]) / max(eye_h, 1.0), 0, 1)
        layer *= (1.0 - 0.18 * dxn**2 - (0.12 if not anime else 0.04) * (1.0 - dyn))[..., None]
        if anime:
            rx, ry = 0.25 * eye_w, 0.52 * eye_h
        else:
            rx = ry = 0.21 * eye_w
        d = np.sqrt(((xx - c[0]) / rx) ** 2 + ((yy - c[1]) / ry) ** 2)
        iris_in = np.clip((1.0 - d) * rx * 1.5 / f, 0, 1)
        if anime:
            grad = np.clip((yy - (c[1] - ry)) / (2 * ry), 0, 1)
            iris_col = iris * (0.45 + 0.75 * grad[..., None])
            pupil = np.clip((0.45 - np.sqrt(((xx - c[0]) / (0.55 * rx)) ** 2 + ((yy - c[1]) / (0.5 * ry)) ** 2)) * 8, 0, 1)
            ring_edge = np.clip((d - 0.86) * 12, 0, 1)
        else:
            ang = np.arctan2(yy - c[1], xx - c[0])
            fibres = 1.0 + 0.12 * np.sin(ang * 23.0 + 7.0 * d) * np.clip(d, 0.3, 1)
            iris_col = iris * (fibres * (0.75 + 0.45 * (1 - d)))[..., None]
            pupil = np.clip((0.4 - d) * rx * 1.5 / f, 0, 1)
            ring_edge = np.clip((d - 0.82) * 6, 0, 1)
        iris_col = iris_col * (1.0 - 0.45 * ring_edge[..., None])
        layer += (iris_col - layer) * iris_in[..., None]
        layer += (np.array([10, 8, 10], np.float32) - layer) * pupil[..., None]
        # highlights
        g = c + np.array([glint_side * 0.35 * rx, -0.35 * ry])
        for gc, gr in ((g, 0.22 * rx), (c + np.array([-glint_side * 0.3 * rx, 0.35 * ry]), 0.1 * rx if anime else 0.0)):
            if gr > 0:
                gd = np.sqrt((xx - gc[0]) ** 2 + (yy - gc[1]) ** 2)
                glint = np.clip((gr - gd) / max(0.8 * f, 0.5) + 0.5, 0, 1) * (0.95 if anime else 0.8)
                layer += (255.0 - layer) * glint[..., None]
        # upper-lid shadow on the eyeball
        layer *= (1.0 - 0.25 * np.clip(1.0 - (yy - top[1]) / max(0.35 * eye_h, 1.0), 0, 1))[..., None]
        mask = np.zeros((hh, ww), np.float32)
        cv2.fillPoly(mask, [_fx(e, (x0, y0))], 1.0, cv2.LINE_AA, 4)
        img[y0:y1, x0:x1] += (layer - img[y0:y1, x0:x1]) * mask[..., None]
        # lids: crease, lash line, lower lid
        if not anime:
            crease = upper_lid.copy()
            crease[:, 1] -= 0.35 * eye_h + 2.0 * f
            crease = _smooth_curve(crease[1:-1], 14)
            _stamp(img, _box(crease, 6 * f, img.shape), _line(crease, 1.5 * f), shadow, 0.35 * st.lines, 1.2 * f)
        # the lower lid's rim, just inside the loop: what a closed eye shows as its lash line
        rim = _smooth_curve(lower_lid, 16) + np.array([0.0, -0.6 * f])
        _stamp(img, box, _line(rim, 1.6 * f), lash * 0.5 + shadow * 0.5, 0.8, 0.4 * f)
        lash_line = _smooth_curve(upper_lid, 24)
        thick = (1.8 if gentle else 2.6) * f
        if anime:
            thick = 3.6 * f
            wing = np.array([outer + (outer - inner) * 0.1 + [0, -0.12 * eye_h]])
            lash_line = np.concatenate([lash_line, wing])
        elif style in ("sharp", "ink"):
            wing = np.array([outer + (outer - inner) * 0.07 + [0, -0.15 * eye_h]])
            lash_line = np.concatenate([lash_line, wing])
        _stamp(img, _box(lash_line, 6 * f, img.shape), _line(lash_line, thick), lash, 0.9, 0.5 * f)
        if anime:
            _stamp(img, box, _line(lower_lid[0:5], 1.4 * f), lash, 0.6)

    # -- outlines (anime): jaw and chin
    if anime:
        jaw = oval[8:29]
        _stamp(img, _box(jaw, 6 * f, img.shape), _line(_smooth_curve(jaw, 48), 2.6 * f), skin * 0.45, 0.9, 0.4 * f)

    # -- relief (sculpted): this seed's bones and hollows, lit by the same light, over everything
    # painted, so that eyes, brows and lips sit in it too
    if st.relief > 0:
        relief = _relief_shading(half(p), inside > 0, face_w * hf, light, st.ambient, 0.5, _rng(seed, style + "/relief"))
        lit = np.clip(1.0 + (relief / float(relief[inside > 0].mean()) - 1.0) * st.relief, *_LIT_RANGE)
        eyes = np.zeros((hs, hs), np.float32)
        cv2.fillPoly(eyes, [_fx(half(p[list(loop)])) for loop in (topo.left_eye, topo.right_eye)], 1.0, cv2.LINE_AA, 4)
        lit += (np.maximum(lit, _EYE_LIT) - lit) * cv2.GaussianBlur(eyes, (0, 0), 1.0 * f)
        light_map = cv2.resize(lit, (size, size), interpolation=cv2.INTER_LINEAR)
        img *= np.power(np.maximum(light_map, 1e-3)[..., None], np.array(_SHADOW_GAMMA, np.float32))
    if style == "ink":  # monochrome, contrast 1.15 about mid grey, warm or cool paper tint
        tint = np.array([1.0, 0.97, 0.9], np.float32) if rng.random() < 0.5 else np.array([0.92, 0.97, 1.02], np.float32)
        lin = tint[:, None] * (1.15 * np.array([0.299, 0.587, 0.114], np.float32))[None, :]
        img = cv2.transform(img, np.concatenate([lin, (tint * (128.0 - 1.15 * 128.0))[:, None]], axis=1))
    texture = cv2.convertScaleAbs(np.maximum(img, 0.0, out=img), alpha=1.06 if style == "sharp" else 1.0, beta=-128.0 * 0.06 if style == "sharp" else 0.0)
    pid = persona_id if persona_id is not None else f"{kind}-{style}-{seed}"
    return Persona(
        id=pid,
        name=name if name is not None else _name(rng),
        kind=kind,
        texture=texture,
        landmarks=p,
        meta={"seed": seed, "style": style},
    )


# -- built-in and ephemeral personas --------------------------------------------------------


_BUILTIN_BY_ID = {b.id: b for b in BUILTIN_PERSONAS}


@lru_cache(maxsize=len(BUILTIN_PERSONAS))
def _builtin(persona_id: str) -> Persona:
    b = _BUILTIN_BY_ID[persona_id]
    return render_procedural(b.seed, b.style, persona_id=b.id, name=b.name, kind="builtin")


def builtin_persona(persona_id: str) -> Persona | None:
    """The shipped persona ``persona_id`` (rendered once, then cached), or None."""
    if not isinstance(persona_id, str) or persona_id not in _BUILTIN_BY_ID:
        return None
    return _builtin(persona_id)


ANONYMIZE_STYLES = ("soft", "sharp")  # anonymized faces should look like ordinary people
# In a small stream the flat-lit faces leave the recognizer the hair and outline around them;
# the relit soft face does not, while in full-resolution crowds it scores closer to the
# people under it (docs/benchmarks.md, "Anonymize mode in small streams").
LOW_RESOLUTION_STYLE = "sculpted"


def ephemeral_persona(rng_seed: int, low_resolution: bool = False) -> Persona:
    """A throwaway persona for anonymize mode: a realistic style and a seed drawn from ``rng_seed``
    (any int); for a low-resolution stream the drawn seed in the sculpted style (another face:
    a style's name seeds its features too)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(rng_seed) & (2**64 - 1), 0x616E6F6E]))
    style = ANONYMIZE_STYLES[int(rng.integers(len(ANONYMIZE_STYLES)))]
    seed = int(rng.integers(0, MAX_SEED, dtype=np.int64))
    if low_resolution:
        style = LOW_RESOLUTION_STYLE
    return render_procedural(seed, style, persona_id=f"ephemeral-{style}-{seed:016x}", name="Anonymous", kind="ephemeral")


__all__ = [
    "STYLES",
    "BUILTIN_PERSONAS",
    "BuiltinPersona",
    "render_procedural",
    "builtin_persona",
    "ephemeral_persona",
]
