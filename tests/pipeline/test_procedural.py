"""Procedural personas: deterministic, distinct, valid layouts, built-ins and ephemeral ones."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.persona import Persona, canonical_layout, face_mesh_topology
from pipeline.procedural import (
    BUILTIN_PERSONAS,
    STYLES,
    builtin_persona,
    ANONYMIZE_STYLES,
    ephemeral_persona,
    render_procedural,
)


def _poly_mask(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return m.astype(bool)


def _mirror_index() -> np.ndarray:
    """For each canonical point, the index of its left-right mirror image."""
    lay = canonical_layout(512).astype(np.float64)
    mirrored = lay.copy()
    mirrored[:, 0] = 512 - mirrored[:, 0]
    d = ((mirrored[:, None, :] - lay[None, :, :]) ** 2).sum(axis=2)
    return d.argmin(axis=1)


def test_styles_listed() -> None:
    assert {"soft", "sharp", "anime"} <= set(STYLES)


@pytest.mark.parametrize("style", STYLES)
def test_deterministic(style: str) -> None:
    a = render_procedural(12345, style)
    b = render_procedural(12345, style)
    assert a.texture.tobytes() == b.texture.tobytes()
    assert a.landmarks.tobytes() == b.landmarks.tobytes()
    assert a.id == b.id and a.name == b.name
    assert a.meta == {"seed": 12345, "style": style}
    assert a.kind == "procedural"
    assert a.texture.shape == (512, 512, 3) and a.texture.dtype == np.uint8
    assert a.landmarks.shape == (468, 2) and a.landmarks.dtype == np.float32


def test_global_rng_untouched() -> None:
    np.random.seed(7)
    expected = np.random.random()
    np.random.seed(7)
    render_procedural(3, "soft")
    assert np.random.random() == expected


def test_seeds_and_styles_differ() -> None:
    faces = {(seed, style): render_procedural(seed, style).texture.astype(np.float32) for seed in (1, 2, 3) for style in STYLES}
    lay = canonical_layout(512)
    inside = _poly_mask((512, 512), lay[face_mesh_topology().face_oval])
    keys = list(faces)
    for i, ka in enumerate(keys):
        for kb in keys[i + 1 :]:
            diff = np.abs(faces[ka] - faces[kb])[inside].mean()
            assert diff > 6.0, (ka, kb, diff)


def test_skin_tones_vary_and_look_like_skin() -> None:
    tones = []
    for seed in range(12):
        p = render_procedural(seed, "soft")
        cheek = p.landmarks[[50, 280]].mean(axis=0)  # between the cheeks: nose bridge area avoided
        x, y = int(p.landmarks[205, 0]), int(p.landmarks[205, 1])
        patch = p.texture[y - 6 : y + 6, x - 6 : x + 6].reshape(-1, 3).astype(np.float64).mean(axis=0)
        assert patch[0] >= patch[1] - 4 >= patch[2] - 12, patch  # red >= green >= blue: skin hues
        tones.append(patch.mean())
        assert np.isfinite(cheek).all()
    assert np.ptp(tones) > 60  # from light to dark


def test_layout_is_valid_and_symmetric() -> None:
    topo = face_mesh_topology()
    mirror = _mirror_index()
    for style in STYLES:
        for seed in (0, 99, 2**63 - 1):
            p = render_procedural(seed, style)
            lm = p.landmarks.astype(np.float64)
            assert (lm >= 0).all() and (lm < 512).all()
            oval = lm[topo.face_oval]
            face_w = float(np.ptp(oval[:, 0]))
            cx = oval[:, 0].mean()
            # symmetric-ish: each point mirrors its partner within 2 % of the face width
            err_x = np.abs((lm[:, 0] - cx) + (lm[mirror, 0] - cx))
            err_y = np.abs(lm[:, 1] - lm[mirror, 1])
            assert err_x.max() < 0.03 * face_w and err_y.max() < 0.03 * face_w, (style, seed)
            for loop in (topo.left_eye, topo.right_eye):
                e = lm[loop]
                # upper lid above the lower lid all along the eye, loop area positive
                assert (e[9:16, 1] < e[1:8][::-1, 1]).all()
                assert cv2.contourArea(e.astype(np.float32)) > 100
            inner = cv2.contourArea(lm[topo.lips_inner].astype(np.float32))
            outer = cv2.contourArea(lm[topo.lips_outer].astype(np.float32))
            assert inner < 0.15 * outer  # mouth (nearly) closed in the texture


def test_layout_perturbed_but_close_to_canonical() -> None:
    lay = canonical_layout(512)
    a, b = render_procedural(1, "soft").landmarks, render_procedural(2, "soft").landmarks
    assert np.abs(a - b).max() > 2.0
    assert np.abs(a - lay).mean() < 20.0


@pytest.mark.parametrize("style", STYLES)
def test_eyes_drawn_inside_the_eye_loops(style: str) -> None:
    topo = face_mesh_topology()
    p = render_procedural(5, style)
    lum = cv2.cvtColor(p.texture, cv2.COLOR_RGB2GRAY).astype(np.float64)
    for loop in (topo.left_eye, topo.right_eye):
        inside = _poly_mask((512, 512), p.landmarks[loop])
        vals = lum[inside]
        assert (vals > 170).mean() > 0.1  # sclera
        assert (vals < 90).mean() > 0.05  # iris / pupil


def test_size_parameter() -> None:
    p = render_procedural(8, "sharp", size=256)
    assert p.texture.shape == (256, 256, 3)
    big = render_procedural(8, "sharp")
    assert np.abs(p.landmarks * 2 - big.landmarks).max() < 2.0


@pytest.mark.parametrize(
    ("seed", "style"),
    [(1, "realistic"), (1, ""), (-1, "soft"), (2**63, "soft"), (1.5, "soft"), ("3", "soft"), (True, "soft")],
)
def test_bad_arguments(seed: object, style: str) -> None:
    with pytest.raises(ValueError) as err:
        render_procedural(seed, style)  # type: ignore[arg-type]
    msg = str(err.value)
    assert ("style" in msg) if style not in STYLES else ("seed" in msg)


def test_bad_size() -> None:
    with pytest.raises(ValueError, match="size"):
        render_procedural(1, "soft", size=16)


def test_ids_and_names() -> None:
    p = render_procedural(42, "anime")
    assert p.id == "procedural-anime-42"
    assert p.name and p.name.isalpha()
    q = render_procedural(42, "anime", persona_id="x", name="Y", kind="builtin")
    assert (q.id, q.name, q.kind) == ("x", "Y", "builtin")
    assert q.describe()["style"] == "anime"


def test_builtins() -> None:
    assert len(BUILTIN_PERSONAS) >= 3 and len({b.id for b in BUILTIN_PERSONAS}) == len(BUILTIN_PERSONAS)
    styles = set()
    for pid, name, seed, style in BUILTIN_PERSONAS:
        p = builtin_persona(pid)
        assert isinstance(p, Persona)
        assert (p.id, p.name, p.kind) == (pid, name, "builtin")
        assert p.meta == {"seed": seed, "style": style}
        assert builtin_persona(pid) is p  # cached
        styles.add(style)
    assert {"soft", "sharp", "anime", "sculpted"} <= styles
    assert BUILTIN_PERSONAS[0].style == "sculpted"  # listed first: the one that holds at low resolution
    assert builtin_persona("nope") is None


def test_ephemeral() -> None:
    a, b, c = ephemeral_persona(1), ephemeral_persona(1), ephemeral_persona(2)
    assert a.kind == "ephemeral" and a.meta["style"] in ANONYMIZE_STYLES
    assert a.texture.tobytes() == b.texture.tobytes() and a.id == b.id
    assert a.id != c.id
    styles = {ephemeral_persona(s).meta["style"] for s in range(12)}
    assert styles == set(ANONYMIZE_STYLES)  # realistic styles only, both used
    assert ephemeral_persona(2**63 - 1).kind == "ephemeral"
    assert ephemeral_persona(-5).kind == "ephemeral"


def test_ephemeral_for_a_low_resolution_stream_is_sculpted_from_the_same_seed() -> None:
    flat, low = ephemeral_persona(1), ephemeral_persona(1, low_resolution=True)
    assert low.kind == "ephemeral" and low.meta == {"seed": flat.meta["seed"], "style": "sculpted"}
    assert low.id != flat.id and low.id.startswith("ephemeral-sculpted-")
    assert low.texture.tobytes() == ephemeral_persona(1, low_resolution=True).texture.tobytes()
    assert {ephemeral_persona(s, low_resolution=True).meta["style"] for s in range(6)} == {"sculpted"}


def _relief(seed: int, light: tuple[float, float, float] = (0.0, 0.4, 1.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The relief's light over the canonical layout at 256 px (light from above), its face mask
    and the layout."""
    from pipeline.procedural import _STYLES, _relief_shading, _rng

    lay = canonical_layout(256).astype(np.float64)
    inside = _poly_mask((256, 256), lay[face_mesh_topology().face_oval])
    face_w = float(np.ptp(lay[face_mesh_topology().face_oval, 0]))
    lv = np.asarray(light) / np.linalg.norm(light)
    shade = _relief_shading(lay, inside, face_w, lv, _STYLES["sculpted"].ambient, 0.5, _rng(seed, "sculpted/relief"))
    return shade / float(shade[inside].mean()), inside, lay


def test_relief_shades_the_sockets_and_lights_the_forehead() -> None:
    """Lit from above, the eye sockets (above the upper lids) fall in shade and the forehead and
    the nose bridge catch the light: what the canonical face's flat triangles missed."""
    lit, _, lay = _relief(1)

    def at(*idx: int) -> float:
        return float(np.mean([lit[int(lay[i, 1]) - 2 : int(lay[i, 1]) + 3, int(lay[i, 0]) - 2 : int(lay[i, 0]) + 3].mean() for i in idx]))

    sockets, forehead, bridge = at(27, 257), at(151), at(6)
    assert sockets < 0.85 and forehead > 1.05 and bridge > 1.05, (sockets, forehead, bridge)


def test_relief_fades_out_beyond_the_face() -> None:
    """Hair, neck and backdrop keep their own shading: a few pixels outside the oval the relief's
    light is back at the face's mean (no dark halo in the feather band or the preview)."""
    lit, inside, _ = _relief(2)
    far = cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, 5) > 20
    assert np.abs(lit[far] - 1.0).max() < 0.02
