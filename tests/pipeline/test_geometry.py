from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.geometry import NeutralShape, inner_weights, similarity, yaw_degrees
from pipeline.persona import canonical_layout, canonical_vertices, face_mesh_topology

OVAL = face_mesh_topology().face_oval
UPPER_LIP, LOWER_LIP = 13, 14


def _live(scale=0.6, angle=10.0, shift=(640.0, 360.0), stretch=1.0) -> np.ndarray:
    """A 'person' whose face is the canonical one with wider-set features, posed in the frame."""
    base = canonical_layout(512).astype(np.float64) - 256.0
    base[:, 0] *= stretch
    a = math.radians(angle)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (base @ r.T) * scale + shift


def test_similarity_recovers_a_pose():
    src = canonical_layout(512).astype(np.float64)
    dst = _live()
    s, r, t = similarity(src - 256.0 + 0.0, dst)
    assert s == pytest.approx(0.6, rel=1e-6)
    assert math.degrees(math.atan2(r[1, 0], r[0, 0])) == pytest.approx(10.0, abs=1e-6)


def test_weights_are_zero_on_the_oval_and_one_inside():
    w = inner_weights()
    assert (w[OVAL] == 0).all()
    assert w[1] == 1.0 and w[UPPER_LIP] == 1.0  # nose tip, lips


def test_oval_stays_and_inner_features_take_the_persona_proportions():
    persona = canonical_layout(512)
    live = _live(stretch=1.15)  # a wider face than the persona's
    shape = NeutralShape(alpha=1.0)
    out = shape.target(live, persona, now=0.0)
    assert np.abs(out[OVAL] - live[OVAL]).max() < 1e-3, "the covered region must stay the live face"
    # inner features: proportions move to the persona's (eye corners closer than the live ones)
    live_eyes = np.linalg.norm(live[263] - live[33])
    out_eyes = np.linalg.norm(out[263] - out[33])
    s, _, _ = similarity(persona.astype(np.float64), live)
    assert abs(out_eyes - np.linalg.norm(persona[263] - persona[33]) * s) < abs(live_eyes - out_eyes)


def test_expressions_still_drive_the_persona():
    persona = canonical_layout(512)
    shape = NeutralShape(time_constant_s=3.0)
    live = _live()
    for i in range(30):  # learn the neutral face over a second
        shape.target(live, persona, now=i / 30)
    neutral_gap = np.linalg.norm(shape.target(live, persona, 1.0)[LOWER_LIP] - shape.target(live, persona, 1.0)[UPPER_LIP])
    open_mouth = live.copy()
    open_mouth[LOWER_LIP] += [0, 25]  # the jaw drops
    out = shape.target(open_mouth, persona, now=1.04)
    gap = np.linalg.norm(out[LOWER_LIP] - out[UPPER_LIP])
    assert gap > neutral_gap + 15, "an opening mouth must open the persona's mouth"


def _turned_head(yaw: float, roll: float = 0.0) -> np.ndarray:
    """The canonical 3D face in image axes (x right, y down, z away), turned and tilted."""
    v = canonical_vertices().astype(np.float64) * np.array([1.0, -1.0, -1.0]) * 20.0
    a, b = math.radians(yaw), math.radians(roll)
    turn = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    tilt = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    return v @ turn.T @ tilt.T + np.array([640.0, 360.0, 0.0])


@pytest.mark.parametrize("yaw", [-60.0, -35.0, 0.0, 20.0, 50.0])
def test_yaw_reads_how_far_the_head_is_turned(yaw):
    assert abs(yaw_degrees(_turned_head(yaw))) == pytest.approx(abs(yaw), abs=1.0)
    assert yaw_degrees(_turned_head(yaw, roll=25.0)) == pytest.approx(yaw_degrees(_turned_head(yaw)), abs=1.0)  # a tilt is not a turn


def test_yaw_sign_tells_the_two_sides_apart():
    assert yaw_degrees(_turned_head(45.0)) * yaw_degrees(_turned_head(-45.0)) < 0
