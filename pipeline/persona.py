"""Personas: the synthetic faces that replace real ones, and the face-mesh topology they share.

A persona is a frontal RGB face texture plus the 468 face-mesh landmarks of that face in
texture pixels. The swap stage warps the texture onto the live landmarks. Image personas
come from an uploaded picture (landmarks measured by our own models); procedural ones are
painted over MediaPipe's canonical face layout (``pipeline/procedural.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from pipeline.onnx_models import MODELS_DIR, verify_model

PERSONA_KINDS = ("image", "procedural", "builtin", "ephemeral")


@dataclass(frozen=True)
class Persona:
    """A synthetic face: texture (HxWx3 RGB uint8) and its 468 landmarks (468x2, texture px).

    ``kind``: image (uploaded), procedural (seed + style), builtin (shipped procedural ones)
    or ephemeral (anonymize mode: made per session and face, never stored).
    """

    id: str
    name: str
    kind: str
    texture: np.ndarray
    landmarks: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in PERSONA_KINDS:
            raise ValueError(f"persona kind must be one of {PERSONA_KINDS}, not {self.kind!r}")
        if self.texture.ndim != 3 or self.texture.shape[2] != 3 or self.texture.dtype != np.uint8:
            raise ValueError(f"persona texture must be HxWx3 uint8 RGB, got {self.texture.shape} {self.texture.dtype}")
        if self.landmarks.shape[0] != 468 or self.landmarks.shape[1] < 2:
            raise ValueError(f"persona landmarks must be 468x2, got {self.landmarks.shape}")

    def describe(self) -> dict[str, Any]:
        """The JSON-safe public view (no pixels)."""
        h, w = self.texture.shape[:2]
        return {"id": self.id, "name": self.name, "kind": self.kind, "width": w, "height": h, **self.meta}


@dataclass(frozen=True)
class FaceMeshTopology:
    """Triangles (Nx3 int32) of the 468-point mesh and the named contour loops."""

    triangles: np.ndarray
    face_oval: list[int]
    lips_outer: list[int]
    lips_inner: list[int]
    left_eye: list[int]
    right_eye: list[int]
    left_eyebrow: list[int]
    right_eyebrow: list[int]

    def points(self, *loops: str) -> np.ndarray:
        """The sorted landmark indices of the named loops together (e.g. "left_eye", "lips_inner")."""
        return np.unique(np.concatenate([np.asarray(getattr(self, name), np.int64) for name in loops]))


def _loop(groups: dict[str, Any], name: str) -> list[int]:
    loops = groups[name]["loops"]
    if loops:
        return list(loops[0])
    return list(groups[name]["polylines"][0])


@lru_cache(maxsize=1)
def face_mesh_topology() -> FaceMeshTopology:
    """The mesh from ``pipeline/models/face_mesh_triangles.json`` (checked against MANIFEST)."""
    data = json.loads(verify_model("face_mesh_triangles.json").read_text())
    g = data["groups"]
    return FaceMeshTopology(
        triangles=np.asarray(data["triangles"], np.int32),
        face_oval=_loop(g, "face_oval"),
        lips_outer=list(data["lips_outer_loop"]),
        lips_inner=list(data["lips_inner_loop"]),
        left_eye=_loop(g, "left_eye"),
        right_eye=_loop(g, "right_eye"),
        left_eyebrow=_loop(g, "left_eyebrow"),
        right_eyebrow=_loop(g, "right_eyebrow"),
    )


@lru_cache(maxsize=1)
def canonical_vertices() -> np.ndarray:
    """MediaPipe's canonical face model, 468x3 in cm (x right, y up, z towards the viewer)."""
    data = json.loads(verify_model("canonical_face_mesh.json").read_text())
    return np.asarray(data["vertices"], np.float32)


def canonical_layout(size: int = 512, margin: float = 0.12) -> np.ndarray:
    """The canonical face seen from the front, fitted into a size x size image (468x2, px).

    x right, y down; the face spans the square minus ``margin`` on each side, centred.
    """
    v = canonical_vertices()
    xy = np.stack([v[:, 0], -v[:, 1]], axis=1)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    scale = size * (1.0 - 2 * margin) / float((hi - lo).max())
    centre = (lo + hi) / 2
    return ((xy - centre) * scale + size / 2).astype(np.float32)


__all__ = ["Persona", "PERSONA_KINDS", "FaceMeshTopology", "face_mesh_topology", "canonical_vertices", "canonical_layout", "MODELS_DIR"]
