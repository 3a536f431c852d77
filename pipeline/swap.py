"""The swap stage: warp a persona's face texture onto the live face-mesh landmarks.

``MeshSwapper.swap(region, points, persona)`` replaces the face in ``region`` in place:

1. Piecewise-affine warp over the face mesh, done as ONE ``cv2.remap``: the destination
   triangles (MediaPipe's 852, strips that fill the two eye loops, and a ring of triangles
   just outside the face oval that feeds the feather band) are rasterised, vectorised in
   numpy, on a coarse grid (the face about ``GRID_FACE_PX`` cells across); each covered
   cell gets its source texture coordinate by barycentric interpolation of the persona's
   landmarks. The map is piecewise linear, so a linear ``cv2.resize`` up to the region is
   nearly exact; then one remap of the persona texture.
2. Open mouth: the inner-lip loop is a hole of the mesh; it is painted with a synthetic
   mouth interior (dark red to black, a hint of upper teeth when open) at full resolution.
   The persona's closed lips are never stretched over it.
3. Colour match: the warped face's mean (and partly its std) in YCrCb is moved, bounded,
   towards the live face's (face oval minus eyes and mouth), as one 3x4 colour transform.
4. Feather blend: alpha is exactly 1 inside the face oval (the ramp lies outside it), so
   inside the oval every output pixel is persona or synthetic content, never live.

Eyes blink with the live face: the eye loops are strip-triangulated (upper lid paired with
lower lid), so a closed live eye collapses the persona's eye to a line. An eye less open
than the persona's shows the lower part of the persona's eye under the lid, as a real lid
would cover it, rather than a squeezed eye; a nearly closed eye is warped at full
resolution so that the coarse grid does not smear the persona's eye across the lid line.

Everything per persona that can be is precomputed once (cached by persona id and texture).
Per frame: about 2-3 ms for a 300 px face on one core (``python -m pipeline.swap``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from pipeline.geometry import inner_weights
from pipeline.persona import Persona, canonical_vertices, face_mesh_topology

GRID_FACE_PX = 64.0  # the face oval spans about this many grid cells (finer for small faces)
RING_SCALE = 1.25  # outer ring of the warp, about the oval's centroid (feeds the feather band)
GROW = 1.15  # default: the persona face oval drawn this much bigger than the live one (pipeline.face_grow)
SMALL_GROW_FULL_PX = 120  # a face this many px across or fewer is grown by pipeline.small_face_grow ...
SMALL_GROW_FADE_PX = 240  # ... and from there to this size the grow fades to pipeline.face_grow
FEATHER = 0.04  # feather ramp width outside the oval, relative to the face size
REFINE_EYE_CELLS = 2.0  # an eye open less than this many grid cells is warped at full resolution
FILL_PASSES = 2  # grid cells left uncovered are filled from their neighbours this many times
CACHE_SIZE = 32  # personas kept precomputed (anonymize mode makes one per face)

# Colour match bounds (YCrCb): fraction of the mean difference applied, max shift, std.
MEAN_GAIN = np.array([0.85, 0.6, 0.6])
MEAN_MAX_SHIFT = np.array([70.0, 14.0, 14.0])
STD_GAIN = np.array([0.5, 0.25, 0.25])
STD_RANGE = (0.7, 1.4)
MIN_STAT_SAMPLES = 24

# Open mouth (inner-lip area / face-oval area): teeth start to show above OPEN_LO.
OPEN_LO, OPEN_HI = 0.009, 0.022
_TEETH = np.array([222.0, 214.0, 200.0], np.float32)
_MOUTH_DEEP = np.array([16.0, 5.0, 7.0], np.float32)
_TONGUE = np.array([112.0, 40.0, 48.0], np.float32)
_MOUTH_RED = np.array([78.0, 20.0, 26.0], np.float32)

# RGB -> YCrCb (full range, offset 128 on the chroma channels).
_YCC = np.array([[0.299, 0.587, 0.114], [0.5, -0.418688, -0.081312], [-0.168736, -0.331264, 0.5]])
_YCC_OFF = np.array([0.0, 128.0, 128.0])
_YCC_INV = np.linalg.inv(_YCC)


# -- topology (static) --------------------------------------------------------------


def _strip(loop: list[int]) -> list[tuple[int, int, int]]:
    """Triangles filling a closed loop whose corners are loop[0] and loop[n // 2].

    Pairs the two sides point by point (lower lid with upper lid), so when the sides meet
    (a closed eye) every triangle collapses to nothing.
    """
    n = len(loop)
    h = n // 2
    side_a = loop[: h + 1]
    side_b = [loop[0], *loop[n - 1 : h : -1], loop[h]]
    tris: list[tuple[int, int, int]] = []
    for k in range(h):
        a0, a1, b0, b1 = side_a[k], side_a[k + 1], side_b[k], side_b[k + 1]
        if k == 0:
            tris.append((a0, a1, b1))
        elif k == h - 1:
            tris.append((a0, a1, b0))
        else:
            tris.append((a0, a1, b0))
            tris.append((b0, a1, b1))
    return tris


@dataclass(frozen=True)
class _Topology:
    triangles: np.ndarray  # (T, 3) int into the 468 points + the ring (468 + len(oval))
    triangles_t: np.ndarray  # (3, T) the same, transposed
    oval: np.ndarray
    inner_lips: np.ndarray
    outer_lips: np.ndarray
    eyes: tuple[np.ndarray, np.ndarray]
    eye_regions: tuple[np.ndarray, ...]  # per eye: triangles refined at full resolution
    strip_idx: np.ndarray  # the eye-strip triangles (indices into triangles)
    strip_eye: np.ndarray  # which eye (0 left, 1 right) each strip triangle fills
    strip_pair: np.ndarray  # (S, 3) each strip corner's lower-lid partner (itself if lower)
    lid_pairs: tuple[tuple[np.ndarray, np.ndarray], ...]  # per eye: upper, lower lid points
    upper_inner: np.ndarray  # inner-lip loop, upper side, corner to corner
    lower_inner: np.ndarray


@lru_cache(maxsize=1)
def _topology() -> _Topology:
    topo = face_mesh_topology()
    oval = list(topo.face_oval)
    n_oval = len(oval)
    z = canonical_vertices()[:, 2].astype(np.float64)

    inner = [tuple(t) for t in topo.triangles.tolist()]
    strips = [_strip(topo.left_eye), _strip(topo.right_eye)]
    eye_of = [-1] * len(inner) + [0] * len(strips[0]) + [1] * len(strips[1])
    inner += strips[0] + strips[1]
    inner_arr = np.asarray(inner, np.int32)
    # Nearer triangles (larger canonical z) are written last, so they win where the 2D
    # projection folds (the nose over the cheek in a turned head).
    order = np.argsort(z[inner_arr].mean(axis=1), kind="stable")
    inner_arr = inner_arr[order]
    eye_of_arr = np.asarray(eye_of, np.int64)[order]

    ring = []
    for k in range(n_oval):
        a, b = oval[k], oval[(k + 1) % n_oval]
        ra, rb = 468 + k, 468 + (k + 1) % n_oval
        ring += [(a, b, ra), (ra, b, rb)]
    triangles = np.concatenate([np.asarray(ring, np.int32), inner_arr])

    eye_regions = []
    pair = np.arange(468 + n_oval)  # upper-lid point -> the lower-lid point it closes onto
    lid_pairs = []
    for loop in (topo.left_eye, topo.right_eye):
        near = np.isin(triangles, loop).any(axis=1)
        eye_regions.append(np.flatnonzero(near))  # strips and the lid ring, in draw order
        n = len(loop)
        up = [loop[n - k] for k in range(1, n // 2)]
        lo = [loop[k] for k in range(1, n // 2)]
        pair[up] = lo
        lid_pairs.append((np.asarray(up, np.int64), np.asarray(lo, np.int64)))
    strip_idx = np.flatnonzero(np.concatenate([np.full(2 * n_oval, -1), eye_of_arr]) >= 0)
    strip_eye = np.concatenate([np.full(2 * n_oval, -1), eye_of_arr])[strip_idx]

    li = list(topo.lips_inner)
    h = len(li) // 2
    lower = li[: h + 1]
    upper = [li[0], *li[len(li) - 1 : h : -1], li[h]]
    return _Topology(
        triangles=triangles,
        triangles_t=np.ascontiguousarray(triangles.T),
        oval=np.asarray(oval, np.int64),
        inner_lips=np.asarray(li, np.int64),
        outer_lips=np.asarray(topo.lips_outer, np.int64),
        eyes=(np.asarray(topo.left_eye, np.int64), np.asarray(topo.right_eye, np.int64)),
        eye_regions=tuple(eye_regions),
        strip_idx=strip_idx,
        strip_eye=strip_eye,
        strip_pair=pair[triangles[strip_idx]],
        lid_pairs=tuple(lid_pairs),
        upper_inner=np.asarray(upper, np.int64),
        lower_inner=np.asarray(lower, np.int64),
    )


def grown_outline(points: np.ndarray, grow: float) -> np.ndarray:
    """The live points with the face outline pushed out from its centroid by ``grow``.

    Inner features stay where they are (the push fades to nothing a short way inside the
    outline, ``geometry.inner_weights``), so the persona's face covers the creator's jaw,
    cheek contour and hairline as well: an outline left live in the hair framing the face
    is what a recognizer still matched after the swap (lp_s32, crowd_1080p).
    """
    if grow == 1.0:
        return points
    c = points[_topology().oval].mean(axis=0)
    push = (grow - 1.0) * (1.0 - inner_weights()).astype(np.float64)
    return points + (points - c) * push[:, None]


def grow_for(face_px: float, grow: float, small_grow: float) -> float:
    """How much a face ``face_px`` across is grown: ``small_grow`` up to SMALL_GROW_FULL_PX,
    ``grow`` from SMALL_GROW_FADE_PX, linear between. A small face is mostly outline and hair
    to a recognizer (a tight group's throwaway faces matched their wearers there), and the
    balloon a bigger oval makes is a small one."""
    if small_grow <= grow or face_px >= SMALL_GROW_FADE_PX:
        return grow
    t = min(1.0, (SMALL_GROW_FADE_PX - face_px) / (SMALL_GROW_FADE_PX - SMALL_GROW_FULL_PX))
    return grow + (small_grow - grow) * t


def _with_ring(points: np.ndarray, oval: np.ndarray) -> np.ndarray:
    o = points[oval]
    c = o.mean(axis=0)
    return np.concatenate([points, c + (o - c) * RING_SCALE])


def _area(poly: np.ndarray) -> float:
    return float(cv2.contourArea(poly.astype(np.float32)))


def _fixed(poly: np.ndarray, shift: int = 4) -> np.ndarray:
    return np.round(poly * (1 << shift)).astype(np.int32)


# -- rasterisation --------------------------------------------------------------------


def rasterize_affine(
    dst: np.ndarray, src: np.ndarray, gw: int, gh: int, eps: float = 1e-4
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise triangles ``dst`` (T,3,2, grid coords) on a gw x gh grid of cell centres.

    Returns (values (gh*gw, C) float32, covered (gh*gw,) bool): each covered cell holds the
    barycentric interpolation of ``src`` (T,3,C) over the triangle containing it; where
    triangles overlap the later one wins (list them far to near).
    """
    dst = np.asarray(dst, np.float64)
    src = np.asarray(src, np.float64)
    planes, covered = _rasterize(
        np.ascontiguousarray(dst[:, :, 0].T), np.ascontiguousarray(dst[:, :, 1].T),
        np.ascontiguousarray(src.transpose(2, 1, 0)), gw, gh, None, eps,
    )
    return np.stack([p.ravel() for p in planes], axis=1), covered.ravel()


def _rasterize(
    xs: np.ndarray, ys: np.ndarray, src: np.ndarray, gw: int, gh: int, cull: np.ndarray | None, eps: float = 1e-4
) -> tuple[list[np.ndarray], np.ndarray]:
    """Scanline rasteriser on planar arrays: xs, ys (3, T) grid coords, src (C, 3, T).

    ``cull``: (T,) orientation of each source triangle; a destination triangle whose
    orientation disagrees faces away and is skipped. Returns C planes (gh, gw) float32 and
    the covered mask (gh, gw). Every (triangle, row) pair, then every cell of each row's
    span, as flat numpy arrays: no Python loop over triangles.
    """
    n_cells = gw * gh
    ch = src.shape[0]
    planes = [np.zeros(n_cells, np.float32) for _ in range(ch)]
    covered = np.zeros(n_cells, bool)
    n_tri = xs.shape[1]
    if n_tri == 0 or n_cells == 0:
        return [p.reshape(gh, gw) for p in planes], covered.reshape(gh, gw)
    xa, xb, xc = xs
    ya, yb, yc = ys
    e1x, e1y, e2x, e2y = xb - xa, yb - ya, xc - xa, yc - ya
    det = e1x * e2y - e1y * e2x
    # vertices sorted by y: top, middle, bottom
    ar = np.arange(n_tri)
    it, ib = ys.argmin(axis=0), ys.argmax(axis=0)
    ib = np.where(ib == it, (it + 1) % 3, ib)
    im = 3 - it - ib
    tx, ty, mx, my, bx, by = xs[it, ar], ys[it, ar], xs[im, ar], ys[im, ar], xs[ib, ar], ys[ib, ar]
    y0 = np.maximum(np.ceil(ty - eps), 0.0)
    y1 = np.minimum(np.floor(by + eps), gh - 1.0)
    ok = (y1 >= y0) & (np.abs(det) > 1e-9)
    ok &= np.maximum(np.maximum(xa, xb), xc) >= -eps
    ok &= np.minimum(np.minimum(xa, xb), xc) <= gw - 1 + eps
    if cull is not None:
        ok &= det * cull >= 0
    inv = 1.0 / np.where(ok, det, 1.0)
    l1x, l1y, l2x, l2y = e2y * inv, -e2x * inv, -e1y * inv, e1x * inv

    # per channel: value = fx * x + fy * y + f0 over each triangle
    coef = np.empty((3 * ch, n_tri), np.float32)
    for k in range(ch):
        s0, s1, s2 = src[k]
        d1, d2 = s1 - s0, s2 - s0
        fx = l1x * d1 + l2x * d2
        fy = l1y * d1 + l2y * d2
        coef[3 * k] = fx
        coef[3 * k + 1] = fy
        coef[3 * k + 2] = s0 - xa * fx - ya * fy

    # edges as x(y) = x_a + (y - y_a) * slope: long (top-bot), upper (top-mid), lower (mid-bot)
    def slope(x0: np.ndarray, y0_: np.ndarray, x1: np.ndarray, y1_: np.ndarray) -> np.ndarray:
        dy = y1_ - y0_
        return np.where(dy > 1e-12, (x1 - x0) / np.maximum(dy, 1e-12), 0.0)

    edges = np.stack([tx, ty, slope(tx, ty, bx, by), slope(tx, ty, mx, my), mx, my, slope(mx, my, bx, by)])
    nr = np.where(ok, y1 - y0 + 1.0, 0.0).astype(np.int64)
    rows = int(nr.sum())
    if rows == 0:
        return [p.reshape(gh, gw) for p in planes], covered.reshape(gh, gw)
    tri = np.repeat(ar, nr)
    start = np.cumsum(nr) - nr
    y = y0[tri] + (np.arange(rows) - start[tri])
    e_tx, e_ty, e_kl, e_ku, e_mx, e_my, e_kd = np.take(edges, tri, axis=1)
    x_long = e_tx + (y - e_ty) * e_kl
    x_short = np.where(y < e_my, e_tx + (y - e_ty) * e_ku, e_mx + (y - e_my) * e_kd)
    x0 = np.maximum(np.ceil(np.minimum(x_long, x_short) - eps), 0.0)
    x1 = np.minimum(np.floor(np.maximum(x_long, x_short) + eps), gw - 1.0)
    nc = np.maximum(x1 - x0 + 1.0, 0.0).astype(np.int64)

    cells = int(nc.sum())
    row = np.repeat(np.arange(rows), nc)
    cstart = np.cumsum(nc) - nc
    cy = y[row]
    cx = x0[row] + (np.arange(cells) - cstart[row])
    ct = np.take(coef, tri[row], axis=1)
    xf, yf = cx.astype(np.float32), cy.astype(np.float32)
    idx = (cy * gw + cx).astype(np.int64)
    for k in range(ch):
        # sequential scatter: later (nearer) triangles overwrite earlier ones
        planes[k][idx] = ct[3 * k] * xf + ct[3 * k + 1] * yf + ct[3 * k + 2]
    covered[idx] = True
    return [p.reshape(gh, gw) for p in planes], covered.reshape(gh, gw)


def _refine(
    full_map: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    tris: np.ndarray,
    src: np.ndarray,
    sign: np.ndarray,
    box: tuple[np.ndarray, np.ndarray],
) -> None:
    """Rasterise triangles ``tris`` (indices into the topology's list) at full resolution
    inside ``box`` ((x0, y0), (x1, y1) rect px) and write their map values over ``full_map``
    (px, py: the points in rect px)."""
    t = _topology().triangles_t[:, tris]
    xs, ys = px[t], py[t]
    h, w = full_map.shape[:2]
    bx0 = max(0, int(math.floor(max(xs.min(), box[0][0]))))
    by0 = max(0, int(math.floor(max(ys.min(), box[0][1]))))
    bx1 = min(w, int(math.ceil(min(xs.max(), box[1][0]))) + 1)
    by1 = min(h, int(math.ceil(min(ys.max(), box[1][1]))) + 1)
    if bx1 <= bx0 or by1 <= by0:
        return
    planes, covered = _rasterize(xs - bx0, ys - by0, src[:, :, tris], bx1 - bx0, by1 - by0, sign[tris])
    patch = full_map[by0:by1, bx0:bx1]
    patch[covered] = cv2.merge(planes)[covered]


def _fill_from_neighbours(planes: list[np.ndarray], covered: np.ndarray, passes: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Grow covered cells into uncovered ones (mean of covered 3x3 neighbours), ``passes`` times."""
    w = covered.astype(np.float32)
    planes = [p * w for p in planes]
    for _ in range(passes):
        bw = cv2.blur(w, (3, 3), borderType=cv2.BORDER_CONSTANT)
        grow = (w < 0.5) & (bw > 1e-6)
        if not grow.any():
            break
        inv = 1.0 / np.maximum(bw, 1e-6)
        planes = [np.where(grow, cv2.blur(p, (3, 3), borderType=cv2.BORDER_CONSTANT) * inv, p) for p in planes]
        w = np.where(grow, np.float32(1.0), w)
    return planes, w > 0.5


# -- per persona ------------------------------------------------------------------------


@dataclass
class _PersonaData:
    texture: np.ndarray  # held so id(texture) stays unique while cached
    src: np.ndarray  # (2, 3, T) source x / y of each triangle's corners
    src_sign: np.ndarray  # (T,) orientation of each source triangle (+1 / -1 / 0)
    fallback: np.ndarray  # (2,) a skin point of the texture, for cells nothing covers
    ycc_mean: np.ndarray
    ycc_std: np.ndarray
    lip_colour: np.ndarray  # (3,) float32 RGB
    strip_src: np.ndarray  # (2, 3, S) the eye strips' own corners
    strip_closed: np.ndarray  # (2, 3, S) the same with each upper-lid corner on its lower partner
    eye_open: np.ndarray  # (2,) opening of each eye (mean lid gap / eye width)


def _eye_opening(pts: np.ndarray, topo: "_Topology") -> np.ndarray:
    out = np.empty(2)
    for k, (up, lo) in enumerate(topo.lid_pairs):
        width = float(np.ptp(pts[topo.eyes[k], 0])) + 1e-6
        out[k] = float(np.mean(pts[lo, 1] - pts[up, 1])) / width
    return out


def _face_mask(shape: tuple[int, int], pts: np.ndarray, topo: _Topology, eye_pad: float) -> np.ndarray:
    """uint8 mask: face oval minus the eyes (padded) and the whole mouth."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [_fixed(pts[topo.oval])], 255, cv2.LINE_8, 4)
    for eye in topo.eyes:
        cv2.fillPoly(mask, [_fixed(pts[eye])], 0, cv2.LINE_8, 4)
        t = max(1, int(round(eye_pad)))
        cv2.polylines(mask, [_fixed(pts[eye])], True, 0, t, cv2.LINE_8, 4)
    cv2.fillPoly(mask, [_fixed(pts[topo.outer_lips])], 0, cv2.LINE_8, 4)
    return mask


def _precompute(persona: Persona) -> _PersonaData:
    topo = _topology()
    tex = persona.texture
    lm = np.asarray(persona.landmarks, np.float64)[:, :2]
    src = _with_ring(lm, topo.oval)
    src_tri = src[topo.triangles]
    e1 = src_tri[:, 1] - src_tri[:, 0]
    e2 = src_tri[:, 2] - src_tri[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    sign = np.where(np.abs(det) < 1e-6, 0.0, np.sign(det))

    face = float(np.ptp(lm[topo.oval], axis=0).max())
    mask = _face_mask(tex.shape[:2], lm, topo, eye_pad=0.02 * face)
    if int(np.count_nonzero(mask)) < MIN_STAT_SAMPLES:
        mask = None
    mean, std = cv2.meanStdDev(cv2.cvtColor(tex, cv2.COLOR_RGB2YCrCb), mask=mask)
    lips = np.zeros(tex.shape[:2], np.uint8)
    cv2.fillPoly(lips, [_fixed(lm[topo.outer_lips])], 255, cv2.LINE_8, 4)
    cv2.fillPoly(lips, [_fixed(lm[topo.inner_lips])], 0, cv2.LINE_8, 4)
    lip_px = tex[lips > 0]
    lip_colour = lip_px.mean(axis=0) if len(lip_px) else np.array([150.0, 70.0, 75.0])
    # forehead point above the brows (between landmarks 151 and 9), inside the oval
    fallback = 0.5 * (lm[151] + lm[9])
    planar = np.ascontiguousarray(src_tri.transpose(2, 1, 0))
    return _PersonaData(
        texture=tex,
        src=planar,
        src_sign=sign,
        fallback=fallback.astype(np.float32),
        ycc_mean=mean.ravel(),
        ycc_std=std.ravel() + 1e-3,
        lip_colour=np.asarray(lip_colour, np.float32),
        strip_src=planar[:, :, topo.strip_idx].copy(),
        strip_closed=np.ascontiguousarray(src[topo.strip_pair].transpose(2, 1, 0)),
        eye_open=np.maximum(_eye_opening(lm, topo), 1e-3),
    )


# -- the stage ------------------------------------------------------------------------


class MeshSwapper:
    """``SwapStage``: piecewise-affine persona warp, colour match, feather blend (see module doc)."""

    def __init__(
        self, *, color_match: bool = True, grid_face_px: float = GRID_FACE_PX, grow: float = GROW,
        small_grow: float | None = None,
    ) -> None:
        self.color_match = color_match
        self.grow = float(grow)
        self.small_grow = self.grow if small_grow is None else float(small_grow)
        self.grid_face_px = float(grid_face_px)
        self._cache: OrderedDict[tuple[str, int], _PersonaData] = OrderedDict()
        self._last_alpha: tuple | None = None
        self.last_openness = 0.0  # inner-lip area / face-oval area of the last swap

    @property
    def last_alpha(self) -> np.ndarray | None:
        """The blend weight of the persona in the last swap (region h x w float32), or None."""
        if self._last_alpha is None:
            return None
        (h, w), x0, y0, alpha = self._last_alpha
        full = np.zeros((h, w), np.float32)
        full[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]] = alpha
        return full

    def _persona_data(self, persona: Persona) -> _PersonaData:
        key = (persona.id, id(persona.texture))
        data = self._cache.get(key)
        if data is None or data.texture is not persona.texture:
            data = _precompute(persona)
            self._cache[key] = data
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return data

    def _extent(self, face: float) -> tuple[float, int, float, float]:
        """Grid step (px), alpha dilation (cells), blur sigma (cells), and how far (px) the
        alpha reaches beyond the grown oval, for a face ``face`` px across."""
        feather = max(1.5, FEATHER * face)
        step = max(1.0, face / self.grid_face_px)  # grid cell size, px
        rad = max(1, int(math.ceil(0.5 * feather / step)))  # alpha: dilate the oval (cells) ...
        sigma = max(0.4, 0.2 * feather / step)  # ... then blur (cells)
        ext = (rad + 3.0 * sigma + 1.0) * step + 2.0
        return step, rad, sigma, ext

    def _grown(self, points: np.ndarray) -> np.ndarray:
        """The live points with the outline grown for the face's size (``grow_for``)."""
        face = float(np.ptp(points[_topology().oval], axis=0).max())
        return grown_outline(points, grow_for(face, self.grow, self.small_grow))

    def footprint(self, points: np.ndarray) -> tuple[float, float, float, float]:
        """The box (x0, y0, x1, y1, in the points' pixels) outside which ``swap`` with these
        points changes nothing: the caller converts and writes back only that much."""
        pts = self._grown(np.asarray(points, np.float64)[:, :2])
        oval = pts[_topology().oval]
        ext = self._extent(float(np.ptp(oval, axis=0).max()))[3] + 1.0
        (x0, y0), (x1, y1) = oval.min(axis=0) - ext, oval.max(axis=0) + ext
        return float(x0), float(y0), float(x1), float(y1)

    def swap(self, region: np.ndarray, points: np.ndarray, persona: Persona) -> None:
        """Replace the face in ``region`` (HxWx3 uint8 RGB, in place) by ``persona``."""
        if region.ndim != 3 or region.shape[2] != 3 or region.dtype != np.uint8:
            raise ValueError(f"region must be HxWx3 uint8, got {region.shape} {region.dtype}")
        pts = np.asarray(points, np.float64)
        if pts.ndim != 2 or pts.shape[0] != 468 or pts.shape[1] < 2:
            raise ValueError(f"points must be 468x2 or 468x3, got {pts.shape}")
        pts = pts[:, :2]
        if not np.isfinite(pts).all():
            raise ValueError("points contain NaN or infinity")
        self._last_alpha = None
        topo = _topology()
        data = self._persona_data(persona)
        H, W = region.shape[:2]
        live_pts = pts
        pts = self._grown(pts)

        oval = pts[topo.oval]
        face = float(np.ptp(oval, axis=0).max())
        if face < 2.0 or H < 1 or W < 1:
            return
        step, rad, sigma, ext = self._extent(face)
        x0 = max(0, int(math.floor(oval[:, 0].min() - ext)))
        y0 = max(0, int(math.floor(oval[:, 1].min() - ext)))
        x1 = min(W, int(math.ceil(oval[:, 0].max() + ext)) + 1)
        y1 = min(H, int(math.ceil(oval[:, 1].max() + ext)) + 1)
        rw, rh = x1 - x0, y1 - y0
        if rw < 1 or rh < 1:
            return  # the face lies wholly outside the region

        # -- the grid and the warp map
        gw, gh = max(1, math.ceil(rw / step)), max(1, math.ceil(rh / step))
        sx, sy = rw / gw, rh / gh
        def to_grid(p: np.ndarray) -> np.ndarray:  # region px -> grid coordinates (cell centres at integers)
            return np.stack([(p[:, 0] - x0 + 0.5) / sx - 0.5, (p[:, 1] - y0 + 0.5) / sy - 0.5], axis=1)

        ring = _with_ring(pts, topo.oval)
        dst = to_grid(ring)
        gx, gy = dst[:, 0], dst[:, 1]
        tri = topo.triangles_t
        src = _blink(data, topo, pts)
        planes, covered = _rasterize(gx[tri], gy[tri], src, gw, gh, data.src_sign)
        planes, covered = _fill_from_neighbours(planes, covered, FILL_PASSES)
        grid_map = cv2.merge(planes)
        grid_map[~covered] = data.fallback
        full_map = cv2.resize(grid_map, (rw, rh), interpolation=cv2.INTER_LINEAR)
        if step > 1.5:
            # A (nearly) closed eye at full resolution: its strip collapses to a line that
            # the coarse grid would smear over a cell or two (a squeezed persona eye).
            for k, tri_eye in enumerate(topo.eye_regions):
                loop = ring[topo.eyes[k]]
                up, lo = topo.lid_pairs[k]
                if float(np.max(ring[lo, 1] - ring[up, 1])) < REFINE_EYE_CELLS * step:
                    box = (loop.min(axis=0) - (x0, y0) - 1.5 * step, loop.max(axis=0) - (x0, y0) + 1.5 * step)
                    _refine(full_map, ring[:, 0] - x0, ring[:, 1] - y0, tri_eye, src, data.src_sign, box)
        map1, map2 = cv2.convertMaps(full_map, None, cv2.CV_16SC2)
        warped = cv2.remap(data.texture, map1, map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

        live = region[y0:y1, x0:x1]
        local = pts - (x0, y0)

        # -- open mouth: synthetic interior in the inner-lip hole (full resolution)
        oval_area = max(_area(live_pts[topo.oval]), 1.0)
        openness = _area(pts[topo.inner_lips]) / oval_area
        self.last_openness = openness
        _paint_mouth(warped, local, topo, openness, data.lip_colour)

        # -- colour match (statistics on the grid)
        if self.color_match:
            gmask = _face_mask((gh, gw), to_grid(live_pts), topo, eye_pad=max(1.0, 0.03 * face / step))
            if cv2.countNonZero(gmask) >= MIN_STAT_SAMPLES:
                small = cv2.resize(np.ascontiguousarray(live), (gw, gh), interpolation=cv2.INTER_NEAREST)
                mean, std = cv2.meanStdDev(cv2.cvtColor(small, cv2.COLOR_RGB2YCrCb), mask=gmask)
                warped = cv2.transform(warped, _colour_transform(data, mean.ravel(), std.ravel()))

        # -- alpha: 1 inside the oval, feather ramp outside it
        goval = np.zeros((gh, gw), np.uint8)
        cv2.fillPoly(goval, [_fixed(dst[topo.oval])], 255, cv2.LINE_8, 4)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rad + 1, 2 * rad + 1))
        galpha = cv2.dilate(goval, kernel).astype(np.float32) * (1.0 / 255.0)
        galpha = cv2.GaussianBlur(galpha, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        alpha = cv2.resize(galpha, (rw, rh), interpolation=cv2.INTER_LINEAR)
        cv2.fillPoly(alpha, [_fixed(local[topo.oval])], 1.0, cv2.LINE_8, 4)  # exactly 1 inside the oval
        if live_pts is not pts:  # the live oval stays opaque even where a wild mesh folds the grown one
            cv2.fillPoly(alpha, [_fixed(live_pts[topo.oval] - (x0, y0))], 1.0, cv2.LINE_8, 4)
        out = cv2.blendLinear(warped, np.ascontiguousarray(live), alpha, 1.0 - alpha)
        region[y0:y1, x0:x1] = out
        self._last_alpha = ((H, W), x0, y0, alpha)


def _blink(data: _PersonaData, topo: _Topology, pts: np.ndarray) -> np.ndarray:
    """Source corners for this frame: an eye that is less open than the persona's shows the
    lower part of the persona's eye under the lid (as a lid would cover it), not a squeezed
    eye; a closed eye shows the persona's lower lid line."""
    f = np.clip(_eye_opening(pts, topo) / data.eye_open, 0.0, 1.0)
    if (f >= 1.0).all():
        return data.src
    src = data.src.copy()
    k = f[topo.strip_eye]
    src[:, :, topo.strip_idx] = data.strip_closed + (data.strip_src - data.strip_closed) * k
    return src


def _colour_transform(data: _PersonaData, live_mean: np.ndarray, live_std: np.ndarray) -> np.ndarray:
    """3x4 RGB transform moving the persona's YCrCb statistics part-way to the live face's.

    Y:  y' = g_y (y - m_y) + m_y + s_y                 (brightness and contrast)
    C:  c' = g_c (c - m_c) + m_c + s_c * y / m_y       (tint, scaled by brightness so that
                                                        dark pixels such as brows keep hue)
    with the shifts s and gains g bounded (MEAN_GAIN, MEAN_MAX_SHIFT, STD_GAIN, STD_RANGE).
    Linear in YCrCb, hence one affine transform of RGB.
    """
    lm, ls = np.asarray(live_mean, np.float64), np.asarray(live_std, np.float64) + 1e-3
    pm, ps = data.ycc_mean, data.ycc_std
    shift = np.clip(MEAN_GAIN * (lm - pm), -MEAN_MAX_SHIFT, MEAN_MAX_SHIFT)
    gain = np.clip(1.0 + STD_GAIN * (ls / ps - 1.0), *STD_RANGE)
    m = np.diag(gain)
    m[1:, 0] += shift[1:] / max(pm[0], 16.0)
    b = pm - gain * pm
    b[0] += shift[0]
    # ycc' = m ycc + b with ycc = A rgb + o  ->  rgb' = A^-1 (m (A rgb + o) + b - o)
    lin = _YCC_INV @ m @ _YCC
    off = _YCC_INV @ (m @ _YCC_OFF + b - _YCC_OFF)
    return np.concatenate([lin, off[:, None]], axis=1).astype(np.float32)


def _paint_mouth(img: np.ndarray, pts: np.ndarray, topo: _Topology, openness: float, lip: np.ndarray) -> None:
    """Fill the inner-lip polygon of ``img`` with a synthetic mouth interior (in place)."""
    poly = pts[topo.inner_lips]
    h, w = img.shape[:2]
    bx0 = max(0, int(math.floor(poly[:, 0].min())) - 1)
    by0 = max(0, int(math.floor(poly[:, 1].min())) - 1)
    bx1 = min(w, int(math.ceil(poly[:, 0].max())) + 2)
    by1 = min(h, int(math.ceil(poly[:, 1].max())) + 2)
    if bx1 - bx0 < 1 or by1 - by0 < 1:
        return
    mask = np.zeros((by1 - by0, bx1 - bx0), np.uint8)
    cv2.fillPoly(mask, [_fixed(poly - (bx0, by0))], 255, cv2.LINE_AA, 4)
    if not mask.any():
        return
    # per column: where the upper and the lower inner lip are
    xs = np.arange(bx0, bx1, dtype=np.float64)
    up, lo = pts[topo.upper_inner], pts[topo.lower_inner]
    uo, lo_o = np.argsort(up[:, 0], kind="stable"), np.argsort(lo[:, 0], kind="stable")
    y_top = np.interp(xs, up[uo, 0], up[uo, 1])
    y_bot = np.interp(xs, lo[lo_o, 0], lo[lo_o, 1])
    top, bot = np.minimum(y_top, y_bot), np.maximum(y_top, y_bot)
    ys = np.arange(by0, by1, dtype=np.float32)[:, None]
    t = np.clip((ys - top[None, :].astype(np.float32)) / np.maximum(bot - top, 1.0)[None, :].astype(np.float32), 0.0, 1.0)
    # colour = edge * we + deep * wd + teeth * wt + tongue * wg, weights as planes
    depth = np.maximum(np.sin(np.float32(np.pi) * t), 0.0)  # dark red at the lips, black in the middle
    we, wd = 1.0 - depth, depth
    wt = np.zeros_like(t)
    wg = np.zeros_like(t)
    k = float(np.clip((openness - OPEN_LO) / (OPEN_HI - OPEN_LO), 0.0, 1.0))
    if k > 0:
        # upper teeth: a band under the upper lip, with faint gaps between teeth
        band = np.clip(1.0 - (t - 0.05) / 0.2, 0.0, 1.0) * (t > 0.02) * np.float32(0.9 * k)
        mouth_w = max(float(poly[:, 0].max() - poly[:, 0].min()), 1.0)
        u = (xs - poly[:, 0].min()) / mouth_w
        gaps = 1.0 - 0.25 * np.exp(-((((u * 8.0) % 1.0) - 0.5) ** 2) / 0.004)
        centre = 1.0 - 0.5 * np.abs(2.0 * u - 1.0) ** 3
        keep = 1.0 - band
        we, wd = we * keep, wd * keep
        wt = band * (gaps * centre).astype(np.float32)[None, :]
        tongue = np.clip((t - 0.75) / 0.25, 0.0, 1.0) * np.float32(0.45 * k)
        keep = 1.0 - tongue
        we, wd, wt, wg = we * keep, wd * keep, wt * keep, tongue
    edge = lip * 0.3 + _MOUTH_RED * 0.7
    colours = np.stack([edge, _MOUTH_DEEP, _TEETH, _TONGUE], axis=1).astype(np.float32)  # 3 x 4
    col = cv2.transform(cv2.merge([we, wd, wt, wg]), colours)
    a = mask.astype(np.float32) * (1.0 / 255.0)
    patch = np.ascontiguousarray(img[by0:by1, bx0:bx1])
    img[by0:by1, bx0:bx1] = cv2.blendLinear(cv2.convertScaleAbs(col), patch, a, 1.0 - a)


def _benchmark() -> None:  # pragma: no cover - manual
    """p50 / p95 of one swap, one thread: ``python -m pipeline.swap``."""
    import time

    from pipeline.persona import canonical_layout
    from pipeline.procedural import builtin_persona, render_procedural

    cv2.setNumThreads(1)
    persona = builtin_persona("builtin-soft") or render_procedural(1, "soft")
    live_face = render_procedural(7, "sharp")
    swapper = MeshSwapper()
    rng = np.random.default_rng(0)
    topo = _topology()
    base = canonical_layout(512).astype(np.float64)
    closed = base.copy()
    for up, lo in topo.lid_pairs:  # both eyes shut
        closed[up, 1] = closed[lo, 1] - 0.5

    def run(size: tuple[int, int], face: float, label: str, layout: np.ndarray = base, n: int = 300) -> None:
        region0 = cv2.resize(live_face.texture, (size[1], size[0]))
        oval = layout[topo.oval]
        s = face / float(np.ptp(oval, axis=0).max())
        times = []
        for _ in range(n):
            ang = np.deg2rad(rng.uniform(-10, 10))
            rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
            pts = (layout - oval.mean(axis=0)) @ rot.T * s + np.array(size[::-1]) / 2 + rng.normal(0, 0.3, layout.shape)
            region = region0.copy()
            t = time.perf_counter()
            swapper.swap(region, pts.astype(np.float32), persona)
            times.append((time.perf_counter() - t) * 1000.0)
        ms = np.array(times[5:])
        print(f"{label:44s} p50 {np.percentile(ms, 50):5.2f} ms  p95 {np.percentile(ms, 95):5.2f} ms  (n={len(ms)})")

    run((360, 360), 300.0, "face 300 px in a 360x360 region")
    run((360, 360), 300.0, "face 300 px in a 360x360 region, eyes shut", closed)
    run((160, 160), 128.0, "face 128 px in a 160x160 region")
    run((40, 40), 30.0, "face 30 px in a 40x40 region")
    run((720, 1280), 200.0, "face 200 px in a whole 1280x720 frame", n=150)


__all__ = ["MeshSwapper", "rasterize_affine", "GRID_FACE_PX", "FEATHER", "OPEN_LO", "OPEN_HI"]


if __name__ == "__main__":  # pragma: no cover
    _benchmark()
