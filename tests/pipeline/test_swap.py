"""MeshSwapper: warp accuracy, privacy (nothing live inside the face oval), mouth, blinks, edges."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.persona import Persona, canonical_layout, face_mesh_topology
from pipeline.procedural import builtin_persona, render_procedural
from pipeline.swap import SMALL_GROW_FADE_PX, SMALL_GROW_FULL_PX, MeshSwapper, _strip, grow_for, grown_outline, rasterize_affine

TOPO = face_mesh_topology()
LAYOUT = canonical_layout(512).astype(np.float64)


@pytest.fixture(autouse=True)
def _one_thread():
    prev = cv2.getNumThreads()
    cv2.setNumThreads(1)
    yield
    cv2.setNumThreads(prev)


@pytest.fixture(scope="module")
def persona() -> Persona:
    p = builtin_persona("builtin-soft")
    assert p is not None
    return p


def similarity(persona: Persona, scale: float, angle_deg: float, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Live points: the persona's own landmarks moved by a similarity; and its 2x3 matrix."""
    a = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    src_c = persona.landmarks[TOPO.face_oval].astype(np.float64).mean(axis=0)
    t = np.asarray(centre) - rot @ src_c
    pts = persona.landmarks.astype(np.float64) @ rot.T + t
    return pts.astype(np.float32), np.concatenate([rot, t[:, None]], axis=1)


def poly_mask(shape: tuple[int, int], pts: np.ndarray, erode: int = 0, dilate: int = 0) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(np.asarray(pts) * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
    if erode:
        m = cv2.erode(m, np.ones((2 * erode + 1, 2 * erode + 1), np.uint8))
    if dilate:
        m = cv2.dilate(m, np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8))
    return m > 0


def noise(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def open_mouth(pts: np.ndarray, amount: float) -> np.ndarray:
    """Drop the jaw: the lower lip and the chin move down, smoothly fading to the sides."""
    p = pts.astype(np.float64).copy()
    up, lo = p[13], p[14]
    mid_y = 0.5 * (up[1] + lo[1])
    width = float(np.ptp(p[TOPO.lips_outer, 0]))
    below = np.clip((p[:, 1] - mid_y) / 0.5, 0.0, 1.0)
    fade = np.exp(-(((p[:, 0] - up[0]) / (1.2 * width)) ** 2))
    p[:, 1] += amount * below * fade
    return p.astype(np.float32)


# -- geometry --------------------------------------------------------------------------


def test_eye_strip_fills_the_loop() -> None:
    for loop in (TOPO.left_eye, TOPO.right_eye):
        tris = np.array(_strip(loop))
        assert len(tris) == len(loop) - 2
        pts = LAYOUT.astype(np.float64)
        t = pts[tris]
        e1, e2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
        areas = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
        assert areas.sum() == pytest.approx(cv2.contourArea(pts[loop].astype(np.float32)), rel=1e-3)


def test_rasterize_affine_identity() -> None:
    dst = np.array([[[1.0, 1.0], [20.0, 2.0], [5.0, 18.0]], [[20.0, 2.0], [30.0, 30.0], [5.0, 18.0]]])
    src = dst * 2.0 + 3.0
    values, covered = rasterize_affine(dst, src, 32, 32)
    cells = np.argwhere(covered.reshape(32, 32))  # (y, x)
    ref = np.zeros((32, 32), np.uint8)
    for tri in dst:
        cv2.fillConvexPoly(ref, np.round(tri).astype(np.int32), 1)
    assert abs(len(cells) - int(ref.sum())) < 0.1 * ref.sum()
    v = values.reshape(32, 32, 2)[covered.reshape(32, 32)]
    np.testing.assert_allclose(v, cells[:, ::-1] * 2.0 + 3.0, atol=1e-3)


# -- warp accuracy -----------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "angle"), [(0.6, 0.0), (0.7, 12.0), (1.1, -25.0)])
def test_similarity_matches_warp_affine(persona: Persona, scale: float, angle: float) -> None:
    size = 600
    pts, m = similarity(persona, scale, angle, (300.0, 310.0))
    region = np.full((size, size, 3), 90, np.uint8)
    MeshSwapper(color_match=False).swap(region, pts, persona)
    ref = cv2.warpAffine(persona.texture, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = poly_mask((size, size), pts[TOPO.face_oval], erode=1)
    inside &= ~poly_mask((size, size), pts[TOPO.lips_inner], dilate=3)  # the synthetic mouth
    diff = np.abs(region.astype(np.float64) - ref)[inside]
    assert diff.mean() < 1.5, diff.mean()
    assert np.percentile(diff, 99) < 12


# -- privacy -----------------------------------------------------------------------------


def _poses(persona: Persona) -> list[np.ndarray]:
    a, _ = similarity(persona, 0.55, 8.0, (200.0, 210.0))
    b, _ = similarity(persona, 0.45, -15.0, (190.0, 200.0))
    return [a, open_mouth(b, 30.0)]


@pytest.mark.parametrize("color_match", [True, False])
def test_nothing_live_inside_the_oval(persona: Persona, color_match: bool) -> None:
    swapper = MeshSwapper(color_match=color_match)
    for pts in _poses(persona):
        outs = []
        for seed in (1, 2):
            live = noise((400, 400), seed)
            out = live.copy()
            swapper.swap(out, pts, persona)
            inside = poly_mask(out.shape[:2], pts[TOPO.face_oval])
            alpha = swapper.last_alpha
            assert alpha is not None and alpha[inside].min() >= 0.98
            a = out[inside].astype(np.float64).ravel()
            b = live[inside].astype(np.float64).ravel()
            assert abs(np.corrcoef(a, b)[0, 1]) < 0.05
            # the feather lies outside the oval, and the far background is untouched
            far = ~poly_mask(out.shape[:2], pts[TOPO.face_oval], dilate=40)
            assert (out[far] == live[far]).all()
            outs.append(out[inside])
        if not color_match:
            # no live statistics used: the face is the same whatever the live pixels were
            assert (outs[0] == outs[1]).all()


def test_grown_outline_moves_only_the_outline() -> None:
    pts = LAYOUT[:, :2]
    grown = grown_outline(pts, 1.15)
    oval = pts[TOPO.face_oval]
    c = oval.mean(axis=0)
    assert np.allclose(grown[TOPO.face_oval] - c, (oval - c) * 1.15)
    inner = [1, 4, 13, 14, *TOPO.left_eye, *TOPO.right_eye, *TOPO.lips_outer]
    assert np.allclose(grown[inner], pts[inner])  # eyes, nose and mouth stay where the live face has them
    assert grown_outline(pts, 1.0) is pts


@pytest.mark.parametrize("grow", [1.0, 1.15])
def test_the_persona_covers_the_live_outline_too(persona: Persona, grow: float) -> None:
    pts, _ = similarity(persona, 0.6, 5.0, (200, 210))
    live = noise((400, 400), 3)
    out = live.copy()
    swapper = MeshSwapper(grow=grow)
    swapper.swap(out, pts, persona)
    alpha = swapper.last_alpha
    oval = pts[TOPO.face_oval].astype(np.float64)
    c = oval.mean(axis=0)
    # a band just outside the live oval (jaw line, cheek contour, hairline)
    band = poly_mask(out.shape[:2], c + (oval - c) * 1.1) & ~poly_mask(out.shape[:2], oval, dilate=2)
    assert band.sum() > 500
    if grow == 1.0:
        assert (alpha[band] < 0.98).mean() > 0.3  # only the feather reaches into it
    else:
        assert alpha[band].min() >= 0.98
        a, b = out[band].astype(np.float64).ravel(), live[band].astype(np.float64).ravel()
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.05


def test_grow_for_a_face_fades_from_the_small_grow_to_the_grow() -> None:
    assert grow_for(SMALL_GROW_FULL_PX, 1.15, 1.5) == 1.5
    assert grow_for(40, 1.15, 1.5) == 1.5
    assert grow_for(SMALL_GROW_FADE_PX, 1.15, 1.5) == 1.15
    assert grow_for(1000, 1.15, 1.5) == 1.15
    assert grow_for((SMALL_GROW_FULL_PX + SMALL_GROW_FADE_PX) / 2, 1.15, 1.5) == pytest.approx(1.325)
    assert grow_for(60, 1.15, 1.15) == 1.15  # off


@pytest.mark.parametrize("side", [100, 300])
def test_a_small_face_is_grown_further(persona: Persona, side: int) -> None:
    """pipeline.small_face_grow: a face of 100 px has its outline covered 1.4x out (the hair
    and outline a recognizer matches on a small face), one of 300 px only the usual 1.15x."""
    unit, _ = similarity(persona, 1.0, 0.0, (0.0, 0.0))
    scale = side / float(np.ptp(unit[TOPO.face_oval], axis=0).max())
    pts, _ = similarity(persona, scale, 0.0, (250.0, 250.0))
    live = noise((500, 500), 4)
    swapper = MeshSwapper(grow=1.15, small_grow=1.5)
    swapper.swap(live.copy(), pts, persona)
    oval = pts[TOPO.face_oval].astype(np.float64)
    c = oval.mean(axis=0)
    band = poly_mask(live.shape[:2], c + (oval - c) * 1.4) & ~poly_mask(live.shape[:2], c + (oval - c) * 1.2, dilate=1)
    covered = (swapper.last_alpha[band] >= 0.98).mean()
    if side == 100:
        assert covered > 0.95
    else:
        assert covered < 0.1


def test_mouth_hole_never_shows_live_pixels(persona: Persona) -> None:
    pts, _ = similarity(persona, 0.5, 0.0, (200.0, 200.0))
    pts = open_mouth(pts, 40.0)
    live = np.zeros((400, 400, 3), np.uint8)
    live[..., 1] = 255  # pure green: nothing synthetic is pure green
    out = live.copy()
    MeshSwapper().swap(out, pts, persona)
    inside = poly_mask(out.shape[:2], pts[TOPO.face_oval])
    px = out[inside].astype(np.int32)
    greenish = (px[:, 1] > 200) & (px[:, 0] < 60) & (px[:, 2] < 60)
    assert greenish.sum() == 0


# -- mouth and eyes ----------------------------------------------------------------------------


def test_open_mouth_is_a_dark_synthetic_interior(persona: Persona) -> None:
    pts, _ = similarity(persona, 0.6, 0.0, (220.0, 220.0))
    opened = open_mouth(pts, 50.0)
    swapper = MeshSwapper(color_match=False)
    out = np.full((440, 440, 3), 128, np.uint8)
    swapper.swap(out, opened, persona)
    assert swapper.last_openness > 0.018
    hole = poly_mask(out.shape[:2], opened[TOPO.lips_inner], erode=2)
    lum = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).astype(np.float64)
    assert hole.sum() > 200
    # mostly dark; not the persona's lip colour stretched over the hole
    assert np.median(lum[hole]) < 60
    lips = poly_mask(persona.texture.shape[:2], persona.landmarks[TOPO.lips_outer]) & ~poly_mask(
        persona.texture.shape[:2], persona.landmarks[TOPO.lips_inner]
    )
    lip_colour = persona.texture[lips].astype(np.float64).mean(axis=0)
    assert np.abs(out[hole].astype(np.float64).mean(axis=0) - lip_colour).mean() > 40
    # a hint of upper teeth: the top rows of the opening are brighter than its middle
    ys, xs = np.nonzero(hole)
    top = hole & (np.arange(440)[:, None] < ys.min() + 0.2 * np.ptp(ys))
    middle = hole & (np.abs(np.arange(440)[:, None] - ys.mean()) < 0.1 * np.ptp(ys))
    assert lum[top].mean() > lum[middle].mean() + 30


def test_closed_mouth_shows_persona_lips(persona: Persona) -> None:
    pts, m = similarity(persona, 0.6, 0.0, (220.0, 220.0))
    swapper = MeshSwapper(color_match=False)
    out = np.full((440, 440, 3), 128, np.uint8)
    swapper.swap(out, pts, persona)
    assert swapper.last_openness < 0.01
    ref = cv2.warpAffine(persona.texture, m, (440, 440), flags=cv2.INTER_LINEAR)
    lips = poly_mask(out.shape[:2], pts[TOPO.lips_outer]) & ~poly_mask(out.shape[:2], pts[TOPO.lips_inner], dilate=2)
    assert np.abs(out[lips].astype(np.float64) - ref[lips]).mean() < 4.0


def _close_eye(pts: np.ndarray, loop: list[int]) -> np.ndarray:
    """A blink: the upper lid comes down onto the lower lid; the skin above follows part way."""
    p = pts.astype(np.float64).copy()
    upper, lower = loop[9:16][::-1], loop[1:8]  # partners, outer corner to inner corner
    drop = float(np.mean(p[lower, 1] - p[upper, 1]))
    c = p[loop].mean(axis=0)
    width = float(np.ptp(p[loop, 0]))
    d = p - c
    above = np.exp(-(d**2).sum(axis=1) / (2 * (0.6 * width) ** 2)) * (d[:, 1] < 0)
    p[:, 1] += 0.5 * drop * above
    p[upper, 1] = p[lower, 1] - 0.5
    return p.astype(np.float32)


def test_closed_eye_shows_lid_not_iris(persona: Persona) -> None:
    pts, _ = similarity(persona, 0.9, 0.0, (256.0, 256.0))
    swapper = MeshSwapper(color_match=False)
    open_out = np.full((512, 512, 3), 128, np.uint8)
    swapper.swap(open_out, pts, persona)
    closed = _close_eye(pts, TOPO.right_eye)
    closed_out = np.full((512, 512, 3), 128, np.uint8)
    swapper.swap(closed_out, closed, persona)
    eye = poly_mask((512, 512), pts[TOPO.right_eye])  # where the open eye was
    lum_open = cv2.cvtColor(open_out, cv2.COLOR_RGB2GRAY)[eye].astype(np.float64)
    lum_closed = cv2.cvtColor(closed_out, cv2.COLOR_RGB2GRAY)[eye].astype(np.float64)
    # skin reference: just below the eye, on the persona
    y = int(pts[TOPO.right_eye][:, 1].max() + 14)
    x0, x1 = int(pts[TOPO.right_eye][:, 0].min()), int(pts[TOPO.right_eye][:, 0].max())
    skin = closed_out[y : y + 6, x0:x1].reshape(-1, 3).astype(np.float64).mean(axis=0)
    assert (lum_open > 170).mean() > 0.15 and (lum_open < 80).mean() > 0.08  # sclera and iris
    assert (lum_closed > 170).mean() < 0.03  # no sclera
    assert (lum_closed < 80).mean() < 0.35  # at most a lash line
    closed_px = closed_out[eye].astype(np.float64)
    assert np.abs(np.median(closed_px, axis=0) - skin).max() < 30
    # the other eye is untouched by the blink
    other = poly_mask((512, 512), pts[TOPO.left_eye])
    assert np.abs(open_out[other].astype(np.int32) - closed_out[other]).mean() < 1.0


# -- edges of the input ------------------------------------------------------------------------


@pytest.mark.parametrize("scale, grow", [(0.3, 1.0), (0.6, 1.15), (1.0, 1.3)])
def test_footprint_holds_every_changed_pixel_and_little_else(persona: Persona, scale: float, grow: float) -> None:
    """The masker converts and writes back only the footprint: nothing may change outside it."""
    size = (620, 620)
    pts, _ = similarity(persona, scale, 12.0, (310.0, 300.0))
    swapper = MeshSwapper(grow=grow)
    live = noise(size)
    out = live.copy()
    swapper.swap(out, pts, persona)
    changed = np.argwhere((out != live).any(axis=2))
    x0, y0, x1, y1 = swapper.footprint(pts)
    assert changed[:, 1].min() >= x0 and changed[:, 1].max() <= x1
    assert changed[:, 0].min() >= y0 and changed[:, 0].max() <= y1
    cw = changed[:, 1].max() - changed[:, 1].min() + 1
    ch = changed[:, 0].max() - changed[:, 0].min() + 1
    assert (x1 - x0) * (y1 - y0) <= 1.15 * cw * ch, "the footprint should not be much bigger than the change"


@pytest.mark.parametrize("face", [30.0, 12.0, 3.0])
def test_tiny_faces(persona: Persona, face: float) -> None:
    scale = face / float(np.ptp(persona.landmarks[TOPO.face_oval], axis=0).max())
    pts, _ = similarity(persona, scale, 5.0, (20.0, 21.0))
    live = noise((40, 40))
    out = live.copy()
    swapper = MeshSwapper()
    swapper.swap(out, pts, persona)
    inside = poly_mask(out.shape[:2], pts[TOPO.face_oval])
    if inside.any():
        assert swapper.last_alpha[inside].min() >= 0.98


def test_partly_outside_matches_full_render(persona: Persona) -> None:
    pts, _ = similarity(persona, 0.5, 10.0, (60.0, 130.0))  # left part of the face off the region
    full = np.full((300, 400, 3), 100, np.uint8)
    big = np.full((300, 600, 3), 100, np.uint8)
    swapper = MeshSwapper(color_match=False)
    swapper.swap(full, pts, persona)
    shifted = pts + np.array([200.0, 0.0], np.float32)
    swapper.swap(big, shifted, persona)
    inside = poly_mask(full.shape[:2], pts[TOPO.face_oval], erode=2)
    diff = np.abs(full.astype(np.float64) - big[:, 200:600])[inside]
    assert diff.mean() < 2.0


@pytest.mark.parametrize("offset", [(-2000.0, 0.0), (0.0, 5000.0), (450.0, 450.0)])
def test_face_outside_region_is_a_no_op(persona: Persona, offset: tuple[float, float]) -> None:
    pts, _ = similarity(persona, 0.5, 0.0, (200.0, 200.0))
    live = noise((300, 300))
    out = live.copy()
    MeshSwapper().swap(out, pts + np.array(offset, np.float32), persona)
    assert (out == live).all()


def test_odd_shapes_and_inputs(persona: Persona) -> None:
    swapper = MeshSwapper()
    pts, _ = similarity(persona, 0.3, 0.0, (90.0, 40.0))
    for shape in [(60, 200), (1, 1), (2, 500)]:
        region = noise(shape)
        swapper.swap(region, pts, persona)
    pts3 = np.concatenate([pts, np.zeros((468, 1), np.float32)], axis=1)
    region = noise((100, 200))
    swapper.swap(region, pts3, persona)  # 468x3 accepted
    # a view into a larger frame is modified in place
    frame = noise((300, 300))
    view = frame[50:250, 20:280]
    before = frame.copy()
    swapper.swap(view, pts, persona)
    assert (frame[:50] == before[:50]).all() and not (frame[50:250, 20:280] == before[50:250, 20:280]).all()
    with pytest.raises(ValueError):
        swapper.swap(noise((50, 50)), pts[:100], persona)
    bad = pts.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError):
        swapper.swap(noise((50, 50)), bad, persona)
    with pytest.raises(ValueError):
        swapper.swap(np.zeros((50, 50), np.uint8), pts, persona)


def test_degenerate_landmarks_do_not_crash(persona: Persona) -> None:
    swapper = MeshSwapper()
    region = noise((200, 200))
    swapper.swap(region, np.full((468, 2), 100.0, np.float32), persona)  # all points at one place
    rng = np.random.default_rng(3)
    wild = rng.uniform(-50, 250, (468, 2)).astype(np.float32)  # a scrambled mesh
    out = region.copy()
    swapper.swap(out, wild, persona)
    inside = poly_mask(out.shape[:2], wild[TOPO.face_oval])
    if inside.any():
        assert swapper.last_alpha[inside].min() >= 0.98


# -- colour ------------------------------------------------------------------------------------


def _face_stats(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
    m = poly_mask(img.shape[:2], pts[TOPO.face_oval], erode=3)
    for loop in (TOPO.left_eye, TOPO.right_eye, TOPO.lips_outer):
        m &= ~poly_mask(img.shape[:2], pts[loop], dilate=3)
    return cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)[m].astype(np.float64).mean(axis=0)


@pytest.mark.parametrize("live_rgb", [(60, 40, 30), (230, 200, 180), (120, 140, 200)])
def test_colour_match_moves_towards_live(persona: Persona, live_rgb: tuple[int, int, int]) -> None:
    pts, _ = similarity(persona, 0.6, 0.0, (220.0, 220.0))
    live = np.empty((440, 440, 3), np.uint8)
    live[:] = live_rgb
    plain, matched = live.copy(), live.copy()
    MeshSwapper(color_match=False).swap(plain, pts, persona)
    MeshSwapper(color_match=True).swap(matched, pts, persona)
    target = cv2.cvtColor(live[:1, :1], cv2.COLOR_RGB2YCrCb)[0, 0].astype(np.float64)
    before, after = _face_stats(plain, pts), _face_stats(matched, pts)
    assert np.abs(after - target).sum() < np.abs(before - target).sum() - 10
    # bounded: the persona does not become the live face
    assert np.abs(after - before).max() <= 75
    assert np.abs(after[1:] - before[1:]).max() <= 16


def test_persona_cache(persona: Persona) -> None:
    swapper = MeshSwapper()
    pts, _ = similarity(persona, 0.5, 0.0, (200.0, 200.0))
    swapper.swap(noise((400, 400)), pts, persona)
    swapper.swap(noise((400, 400)), pts, persona)
    assert len(swapper._cache) == 1
    other = render_procedural(9, "sharp", persona_id=persona.id)  # same id, new texture
    a = np.full((400, 400, 3), 128, np.uint8)
    swapper.swap(a, pts, other)
    assert len(swapper._cache) == 2
    b = np.full((400, 400, 3), 128, np.uint8)
    MeshSwapper().swap(b, pts, other)
    assert (a == b).all()
