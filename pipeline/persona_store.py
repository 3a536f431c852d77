"""Personas kept on disk: uploaded images and procedural (seed + style) faces, per API key.

Layout: ``<root>/<id>/texture.png`` (RGB face texture) and ``<root>/<id>/persona.json``
(name, kind, landmarks 468x2 in texture px, meta, created_at, owner). ``root`` is
``<data_dir>/personas`` on a node. Builtin personas (``pipeline.procedural``) are not
stored: they resolve for every caller and cannot be deleted.

Image personas are checked with our own models: exactly one confident face, big enough,
roughly frontal, with landmarks; the stored texture is a crop around that face.
Errors are :class:`PersonaError` with a ``reason`` code the HTTP layer maps onto a status.

Thread safety: methods may be called from several threads (aiohttp handlers run the
heavy ones in an executor). Model inference is serialised by one lock (the models are
loaded once, on first use); directory writes are atomic renames.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import shutil
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.persona import Persona
from pipeline.tracking import LEFT_EYE_OUTER, RIGHT_EYE_OUTER, grow_box, roi_from_detection, roi_from_landmarks

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 8 << 20
MAX_IMAGE_SIDE = 4096
MIN_FACE_PX = 96  # face box side (detector box, source px)
MIN_PRESENCE = 0.5
MAX_ROLL_DEG = 25.0
MAX_YAW_OFFSET = 0.25  # nose tip off the eye-corner midpoint, as a fraction of the eye-corner distance
CROP_MARGIN = 0.2  # the landmarks' box grown by this much on each side (40 % in all)
MAX_TEXTURE_SIDE = 512
DETECT_WIDTH = 1024
MAX_NAME_LENGTH = 64
NOSE_TIP = 1

IMAGE_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_List = list  # PersonaStore.list shadows the builtin inside the class
_ID_RE = re.compile(r"^p_[A-Za-z0-9_-]{16,64}$")


class PersonaError(ValueError):
    """A persona cannot be made, found or removed. ``reason`` is a stable code:

    unsupported_type, too_large, bad_image, image_too_large (pixel size), no_face,
    several_faces, face_too_small, no_landmarks, not_frontal, invalid_name, invalid_seed,
    invalid_style, builtin, not_found.
    """

    def __init__(self, reason: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field


@dataclass(frozen=True)
class PersonaRecord:
    """What a listing shows: everything but the pixels."""

    id: str
    name: str
    kind: str
    width: int
    height: int
    created_at: float | None
    owner: str | None  # API-key id; None for builtins
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        return self.kind == "builtin"

    def public(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "width": self.width,
            "height": self.height,
            "created_at": self.created_at,
            "builtin": self.builtin,
        }
        for key in ("seed", "style"):
            if key in self.meta:
                body[key] = self.meta[key]
        return body


# -- image checks (pure) --------------------------------------------------------------------


def sniff_image_type(data: bytes) -> str | None:
    """jpeg | png | webp from the magic bytes, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def image_dimensions(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) read from the header, without decoding (None if it cannot be read).

    Checked before decoding so that a small file declaring a huge image is refused
    without allocating it.
    """
    try:
        if kind == "png":
            if data[12:16] != b"IHDR":
                return None
            w, h = struct.unpack(">II", data[16:24])
            return int(w), int(h)
        if kind == "webp":
            chunk = data[12:16]
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L":
                b = data[21:25]
                bits = int.from_bytes(b, "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                return w, h
            return None
        if kind == "jpeg":
            i = 2
            n = len(data)
            while i + 4 <= n:
                if data[i] != 0xFF:
                    return None
                marker = data[i + 1]
                if marker == 0xFF:  # fill byte
                    i += 1
                    continue
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                    i += 2
                    continue
                (length,) = struct.unpack(">H", data[i + 2 : i + 4])
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                    return int(w), int(h)
                if marker == 0xDA or length < 2:  # start of scan before any frame header
                    return None
                i += 2 + length
            return None
    except struct.error:
        return None
    return None


def decode_image(data: bytes, *, max_bytes: int = MAX_IMAGE_BYTES, max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:
    """Check and decode an uploaded image to RGB uint8 (JPEG, PNG or WebP only)."""
    if len(data) > max_bytes:
        raise PersonaError("too_large", f"image is {len(data)} bytes; the limit is {max_bytes} bytes ({max_bytes >> 20} MB)")
    kind = sniff_image_type(data)
    if kind is None:
        raise PersonaError("unsupported_type", "not a JPEG, PNG or WebP image (checked by content, not by name)")
    dims = image_dimensions(data, kind)
    if dims is None:
        raise PersonaError("bad_image", f"cannot read the {kind.upper()} header: the file is damaged or truncated")
    if max(dims) > max_side:
        raise PersonaError("image_too_large", f"image is {dims[0]}x{dims[1]} px; at most {max_side} px per side")
    if min(dims) < 1:
        raise PersonaError("bad_image", f"image has an empty size {dims[0]}x{dims[1]}")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise PersonaError("bad_image", f"cannot decode the {kind.upper()} image: the file is damaged or truncated")
    if max(bgr.shape[:2]) > max_side:  # the header lied
        raise PersonaError("image_too_large", f"image is {bgr.shape[1]}x{bgr.shape[0]} px; at most {max_side} px per side")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def face_pose(xy: np.ndarray) -> tuple[float, float]:
    """(roll in degrees, yaw offset): the eye-corner line's angle, and how far the nose tip
    sits from the eye corners' midpoint along that line, as a fraction of their distance
    (0 frontal, about +-0.25 at 30 degrees of yaw)."""
    right, left, nose = xy[RIGHT_EYE_OUTER].astype(np.float64), xy[LEFT_EYE_OUTER].astype(np.float64), xy[NOSE_TIP].astype(np.float64)
    axis = left - right
    dist2 = float(axis @ axis)
    if dist2 < 1e-6:
        return 0.0, 1.0
    roll = math.degrees(math.atan2(axis[1], axis[0]))
    offset = float((nose - (left + right) / 2) @ axis) / dist2
    return roll, offset


# -- the store --------------------------------------------------------------------------------


class PersonaStore:
    """Personas on disk under ``root`` (``<data_dir>/personas``), plus the builtins."""

    def __init__(self, root: Path | str, *, detect_width: int = DETECT_WIDTH) -> None:
        self.root = Path(root)
        self.detect_width = detect_width
        self._models_lock = threading.Lock()  # inference, one image at a time; also guards lazy loading
        self._detector: Any = None
        self._landmarker: Any = None
        self._cache_lock = threading.Lock()
        self._cache: dict[str, Persona] = {}  # id -> loaded persona (small: textures are <= 512 px)
        self._builtin_records: list[PersonaRecord] | None = None

    @classmethod
    def in_data_dir(cls, data_dir: Path | str) -> PersonaStore:
        return cls(Path(data_dir) / "personas")

    # -- making personas --------------------------------------------------------------------

    def create_from_image(self, data: bytes, *, name: str | None = None, owner: str) -> Persona:
        """Check an uploaded face image and store the crop around its face. Raises PersonaError."""
        name = _check_name(name, default="image persona")
        rgb = decode_image(data)
        texture, landmarks, info = self.measure_face(rgb)
        meta = {"source_width": int(rgb.shape[1]), "source_height": int(rgb.shape[0]), **info}
        return self._save(Persona(_new_id(), name, "image", texture, landmarks, meta), owner)

    def create_procedural(self, seed: int, style: str, *, name: str | None = None, owner: str) -> Persona:
        """Render a face from seed + style (same seed and style, same face) and store it."""
        from pipeline.procedural import STYLES, render_procedural

        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise PersonaError("invalid_seed", "seed must be an integer from 0 to 2**63-1", field="seed")
        if style not in STYLES:
            raise PersonaError("invalid_style", f"style must be one of {', '.join(STYLES)}", field="style")
        name = _check_name(name, default=f"{style} #{seed}")
        pid = _new_id()
        rendered = render_procedural(seed, style, persona_id=pid, name=name, kind="procedural")
        meta = {**_json_safe(rendered.meta), "seed": seed, "style": style}
        persona = Persona(pid, name, "procedural", rendered.texture, rendered.landmarks[:, :2].astype(np.float32), meta)
        return self._save(persona, owner)

    def measure_face(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(texture crop, 468x2 landmarks in crop px, info) for an image holding exactly one usable face."""
        h, w = rgb.shape[:2]
        with self._models_lock:
            detector, landmarker = self._models()
            faces = detector.detect(rgb)
            if not faces:
                raise PersonaError("no_face", "no face found in the image")
            if len(faces) > 1:
                sizes = ", ".join(f"{int(f.size)} px" for f in faces[:8])
                raise PersonaError(
                    "several_faces", f"found {len(faces)} faces ({sizes}); a persona image must show exactly one face (crop it to the one you want)"
                )
            face = faces[0]
            if face.size < MIN_FACE_PX:
                raise PersonaError(
                    "face_too_small", f"the face is {int(face.size)} px; at least {MIN_FACE_PX} px is needed (use a larger or closer image)"
                )
            lm = landmarker.landmarks(rgb, roi_from_detection(face))
            if lm.presence >= MIN_PRESENCE and np.isfinite(lm.points).all():
                lm = landmarker.landmarks(rgb, roi_from_landmarks(lm.points))
        if lm.presence < MIN_PRESENCE or not np.isfinite(lm.points).all():
            raise PersonaError("no_landmarks", f"the face's landmarks could not be found (presence {lm.presence:.2f})")
        xy = lm.xy.astype(np.float64)
        roll, yaw = face_pose(xy)
        if abs(roll) > MAX_ROLL_DEG:
            raise PersonaError("not_frontal", f"the face is tilted {roll:.0f} degrees; at most {MAX_ROLL_DEG:.0f} (use an upright, frontal face)")
        if abs(yaw) > MAX_YAW_OFFSET:
            side = "left" if yaw < 0 else "right"
            raise PersonaError(
                "not_frontal", f"the face is turned to the {side} (nose offset {abs(yaw):.0%} of the eye distance, at most {MAX_YAW_OFFSET:.0%}); use a frontal face"
            )
        box = np.array([*xy.min(axis=0), *xy.max(axis=0)], np.float32)
        x0, y0, x1, y1 = grow_box(box, CROP_MARGIN, (h, w))
        x0, y0 = int(math.floor(x0)), int(math.floor(y0))
        x1, y1 = int(math.ceil(x1)), int(math.ceil(y1))
        crop = rgb[y0:y1, x0:x1]
        points = (xy - [x0, y0]).astype(np.float64)
        scale = min(1.0, MAX_TEXTURE_SIDE / max(crop.shape[:2]))
        if scale < 1.0:
            size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
            sx, sy = size[0] / crop.shape[1], size[1] / crop.shape[0]
            crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
            points = points * [sx, sy]
        info = {"face_px": int(face.size), "roll_deg": round(roll, 1), "yaw_offset": round(yaw, 3), "presence": round(float(lm.presence), 3)}
        return np.ascontiguousarray(crop), points.astype(np.float32), info

    def _models(self) -> tuple[Any, Any]:
        if self._detector is None:
            from pipeline.backends.onnx import OnnxLandmarker, YuNetDetector

            self._detector = YuNetDetector(detect_width=self.detect_width)
            self._landmarker = OnnxLandmarker()
        return self._detector, self._landmarker

    # -- reading ----------------------------------------------------------------------------

    def get(self, persona_id: str, owner: str | None = None) -> Persona | None:
        """The persona, if it exists and ``owner`` may use it (builtins: everyone; owner None: any)."""
        builtin = _builtin(persona_id)
        if builtin is not None:
            return builtin
        doc = self._read_doc(persona_id)
        if doc is None or (owner is not None and doc.get("owner") != owner):
            return None
        with self._cache_lock:
            cached = self._cache.get(persona_id)
        if cached is not None:
            return cached
        persona = self._load(persona_id, doc)
        if persona is not None:
            with self._cache_lock:
                if len(self._cache) >= 64:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[persona_id] = persona
        return persona

    def record(self, persona_id: str, owner: str | None = None) -> PersonaRecord | None:
        """The persona's public description without loading its texture."""
        for rec in self._builtins():
            if rec.id == persona_id:
                return rec
        doc = self._read_doc(persona_id)
        if doc is None or (owner is not None and doc.get("owner") != owner):
            return None
        return _record(persona_id, doc)

    def exists(self, persona_id: str, owner: str | None = None) -> bool:
        return self.record(persona_id, owner) is not None

    def list(self, owner: str) -> _List[PersonaRecord]:
        """The owner's personas (oldest first), then the builtins."""
        mine = []
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if not _ID_RE.match(entry.name):
                    continue
                doc = self._read_doc(entry.name)
                if doc is not None and doc.get("owner") == owner:
                    mine.append(_record(entry.name, doc))
        mine.sort(key=lambda r: (r.created_at or 0.0, r.id))
        return mine + self._builtins()

    def texture_png(self, persona_id: str, owner: str | None = None) -> bytes | None:
        """The texture as PNG bytes (for previews)."""
        if _builtin_id(persona_id):
            persona = _builtin(persona_id)
            if persona is None:
                return None
            ok, buf = cv2.imencode(".png", cv2.cvtColor(persona.texture, cv2.COLOR_RGB2BGR))
            return buf.tobytes() if ok else None
        doc = self._read_doc(persona_id)
        if doc is None or (owner is not None and doc.get("owner") != owner):
            return None
        try:
            return (self.root / persona_id / "texture.png").read_bytes()
        except OSError:
            persona = self.get(persona_id, owner)
            if persona is None:
                return None
            ok, buf = cv2.imencode(".png", cv2.cvtColor(persona.texture, cv2.COLOR_RGB2BGR))
            return buf.tobytes() if ok else None

    # -- removing ---------------------------------------------------------------------------

    def delete(self, persona_id: str, owner: str) -> bool:
        """Remove the owner's persona; False if there is none. Builtins raise PersonaError('builtin')."""
        if _builtin_id(persona_id):
            raise PersonaError("builtin", f"{persona_id} is a builtin persona; builtins cannot be deleted")
        doc = self._read_doc(persona_id)
        if doc is None or doc.get("owner") != owner:
            return False
        target = self.root / persona_id
        trash = self.root / f".deleted-{persona_id}-{secrets.token_hex(4)}"
        try:
            os.replace(target, trash)  # atomic: readers see it or not at all
        except OSError:
            return False
        with self._cache_lock:
            self._cache.pop(persona_id, None)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("persona deleted", extra={"persona_id": persona_id})
        return True

    # -- disk -------------------------------------------------------------------------------

    def _read_doc(self, persona_id: str) -> dict[str, Any] | None:
        if not isinstance(persona_id, str) or not _ID_RE.match(persona_id):
            return None
        try:
            doc = json.loads((self.root / persona_id / "persona.json").read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def _load(self, persona_id: str, doc: dict[str, Any]) -> Persona | None:
        kind = doc.get("kind", "image")
        landmarks = np.asarray(doc.get("landmarks", []), np.float32)
        bgr = cv2.imread(str(self.root / persona_id / "texture.png"), cv2.IMREAD_COLOR)
        if bgr is None and kind == "procedural":  # the texture is a cache: re-render it
            from pipeline.procedural import render_procedural

            meta = doc.get("meta", {})
            p = render_procedural(int(meta["seed"]), str(meta["style"]), persona_id=persona_id, name=doc.get("name"), kind="procedural")
            texture, landmarks = p.texture, p.landmarks[:, :2].astype(np.float32)
        elif bgr is None:
            log.warning("persona %s has no readable texture", persona_id)
            return None
        else:
            texture = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        try:
            return Persona(persona_id, str(doc.get("name", "")), kind, texture, landmarks, dict(doc.get("meta", {})))
        except ValueError as exc:
            log.warning("persona %s is damaged: %s", persona_id, exc)
            return None

    def _save(self, persona: Persona, owner: str) -> Persona:
        self.root.mkdir(parents=True, exist_ok=True)
        h, w = persona.texture.shape[:2]
        doc = {
            "id": persona.id,
            "name": persona.name,
            "kind": persona.kind,
            "width": w,
            "height": h,
            "landmarks": np.round(persona.landmarks[:, :2].astype(np.float64), 3).tolist(),
            "meta": _json_safe(persona.meta),
            "created_at": time.time(),
            "owner": owner,
        }
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.root))
        try:
            ok, buf = cv2.imencode(".png", cv2.cvtColor(persona.texture, cv2.COLOR_RGB2BGR))
            if not ok:
                raise PersonaError("bad_image", "could not encode the persona texture")
            (tmp / "texture.png").write_bytes(buf.tobytes())
            (tmp / "persona.json").write_text(json.dumps(doc))
            os.chmod(tmp, 0o755)
            os.replace(tmp, self.root / persona.id)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("persona created", extra={"persona_id": persona.id, "kind": persona.kind, "owner": owner})
        return persona

    def _builtins(self) -> _List[PersonaRecord]:
        if self._builtin_records is None:
            records = []
            for pid, name, seed, style in _builtin_list():
                persona = _builtin(pid)
                w = h = 0
                if persona is not None:
                    h, w = persona.texture.shape[:2]
                records.append(PersonaRecord(pid, name, "builtin", w, h, None, None, {"seed": seed, "style": style}))
            self._builtin_records = records
        return list(self._builtin_records)


# -- helpers ----------------------------------------------------------------------------------


def _new_id() -> str:
    return "p_" + secrets.token_urlsafe(16)


def _check_name(name: Any, *, default: str) -> str:
    if name is None or name == "":
        return default
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or any(ord(c) < 32 for c in name):
        raise PersonaError("invalid_name", f"name must be a string of at most {MAX_NAME_LENGTH} printable characters", field="name")
    return name.strip() or default


def _builtin_list() -> list[tuple[str, str, int, str]]:
    from pipeline.procedural import BUILTIN_PERSONAS

    return [tuple(b) for b in BUILTIN_PERSONAS]  # type: ignore[misc]


def _builtin_id(persona_id: str) -> bool:
    return any(b[0] == persona_id for b in _builtin_list())


def _builtin(persona_id: str) -> Persona | None:
    if not isinstance(persona_id, str) or not _builtin_id(persona_id):
        return None
    from pipeline.procedural import builtin_persona

    return builtin_persona(persona_id)


def _record(persona_id: str, doc: dict[str, Any]) -> PersonaRecord:
    return PersonaRecord(
        persona_id,
        str(doc.get("name", "")),
        str(doc.get("kind", "image")),
        int(doc.get("width", 0)),
        int(doc.get("height", 0)),
        doc.get("created_at"),
        doc.get("owner"),
        dict(doc.get("meta", {})),
    )


def _json_safe(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[str(key)] = value
    return out


__all__ = ["PersonaStore", "PersonaError", "PersonaRecord", "decode_image", "sniff_image_type", "image_dimensions", "face_pose"]
