"""PersonaStore on disk, with the real face models: procedural and image personas, builtins,
and every way an uploaded image is refused. Real portraits come from ../shared/eval
(those cases skip with a message where it is absent)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.persona_store import (
    MAX_IMAGE_BYTES,
    PersonaError,
    PersonaStore,
    decode_image,
    face_pose,
    image_dimensions,
    sniff_image_type,
)
from pipeline.procedural import BUILTIN_PERSONAS
from tests.helpers import have_shared_eval

PORTRAIT = "face_recognition/obama.jpg"


def eval_image(rel: str) -> Path:
    root = have_shared_eval()
    if root is None:
        pytest.skip("../shared/eval is absent: image persona checks need real portraits")
    return root / "images" / rel


def encode(rgb: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def image_store(tmp_path_factory: pytest.TempPathFactory) -> PersonaStore:
    """One store for the image cases: the face models load once."""
    return PersonaStore(tmp_path_factory.mktemp("data") / "personas")


def test_procedural_round_trip_on_disk(tmp_path: Path) -> None:
    root = tmp_path / "personas"
    store = PersonaStore(root)
    p = store.create_procedural(7, "soft", name="Seven", owner="key_a")
    assert p.id.startswith("p_") and len(p.id) >= 18 and p.kind == "procedural"
    doc = json.loads((root / p.id / "persona.json").read_text())
    assert doc["name"] == "Seven" and doc["kind"] == "procedural" and doc["owner"] == "key_a"
    assert doc["meta"]["seed"] == 7 and doc["meta"]["style"] == "soft" and doc["created_at"] > 0
    assert np.asarray(doc["landmarks"]).shape == (468, 2)
    assert (root / p.id / "texture.png").is_file()

    fresh = PersonaStore(root)  # nothing cached: read back from disk
    got = fresh.get(p.id, "key_a")
    assert got is not None and np.array_equal(got.texture, p.texture)
    assert np.allclose(got.landmarks, p.landmarks, atol=1e-3)
    assert fresh.get(p.id, "key_b") is None  # another key's persona is invisible
    assert fresh.get(p.id) is not None  # the node (owner unknown) may resolve it

    twin = store.create_procedural(7, "soft", owner="key_a")
    assert twin.id != p.id and np.array_equal(twin.texture, p.texture)  # same seed, same face
    other = store.create_procedural(8, "soft", owner="key_a")
    assert not np.array_equal(other.texture, p.texture)

    ids_a = [r.id for r in store.list("key_a")]
    builtin_ids = [b[0] for b in BUILTIN_PERSONAS]
    assert ids_a == [p.id, twin.id, other.id, *builtin_ids]
    assert [r.id for r in store.list("key_b")] == builtin_ids

    assert store.delete(p.id, "key_b") is False  # not theirs
    assert store.delete(p.id, "key_a") is True
    assert not (root / p.id).exists()
    assert store.get(p.id, "key_a") is None and fresh.get(p.id) is None
    assert store.delete(p.id, "key_a") is False


def test_procedural_texture_is_a_cache(tmp_path: Path) -> None:
    store = PersonaStore(tmp_path)
    p = store.create_procedural(12345, "anime", owner="k")
    (tmp_path / p.id / "texture.png").unlink()
    again = PersonaStore(tmp_path).get(p.id, "k")
    assert again is not None and np.array_equal(again.texture, p.texture)


def test_builtins_listed_resolved_and_undeletable(tmp_path: Path) -> None:
    store = PersonaStore(tmp_path)
    records = store.list("anyone")
    assert {r.id for r in records} == {b[0] for b in BUILTIN_PERSONAS}
    assert all(r.kind == "builtin" and r.builtin and r.width > 0 for r in records)
    first = BUILTIN_PERSONAS[0][0]
    persona = store.get(first, "anyone")
    assert persona is not None and persona.kind == "builtin"
    assert store.texture_png(first, "anyone")[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(PersonaError) as err:
        store.delete(first, "anyone")
    assert err.value.reason == "builtin" and "cannot be deleted" in str(err.value)


def test_bad_ids_and_fields(tmp_path: Path) -> None:
    store = PersonaStore(tmp_path)
    for bad in ("../etc/passwd", "p_", "p_doesnotexist_0123456789", "", "builtin-nope"):
        assert store.get(bad, "k") is None and store.record(bad, "k") is None
    with pytest.raises(PersonaError) as err:
        store.create_procedural(-1, "soft", owner="k")
    assert err.value.reason == "invalid_seed" and err.value.field == "seed"
    with pytest.raises(PersonaError) as err:
        store.create_procedural(1, "cubist", owner="k")
    assert err.value.reason == "invalid_style" and err.value.field == "style"
    with pytest.raises(PersonaError) as err:
        store.create_procedural(1, "soft", name="x" * 65, owner="k")
    assert err.value.reason == "invalid_name"


def test_concurrent_creates(tmp_path: Path) -> None:
    store = PersonaStore(tmp_path)
    made: list[str] = []
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            made.append(store.create_procedural(seed, "sharp", owner="k").id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(made)) == 4
    assert {r.id for r in store.list("k") if not r.builtin} == set(made)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


# -- image checks that need no model --------------------------------------------------------


def test_sniff_and_header_dimensions() -> None:
    rgb = np.zeros((37, 53, 3), np.uint8)
    for ext, kind in ((".png", "png"), (".jpg", "jpeg"), (".webp", "webp")):
        data = encode(rgb, ext)
        assert sniff_image_type(data) == kind
        assert image_dimensions(data, kind) == (53, 37)
    assert sniff_image_type(b"GIF89a....") is None
    assert sniff_image_type(b"") is None


def test_decode_rejects_with_reasons() -> None:
    with pytest.raises(PersonaError) as err:
        decode_image(b"%PDF-1.4 not an image at all")
    assert err.value.reason == "unsupported_type"
    with pytest.raises(PersonaError) as err:
        decode_image(b"GIF89a" + b"\0" * 100)
    assert err.value.reason == "unsupported_type"
    with pytest.raises(PersonaError) as err:
        decode_image(b"\xff\xd8\xff" + b"\0" * (MAX_IMAGE_BYTES))
    assert err.value.reason == "too_large"
    wide = encode(np.zeros((4, 5000, 3), np.uint8))  # a small file declaring a big image
    with pytest.raises(PersonaError) as err:
        decode_image(wide)
    assert err.value.reason == "image_too_large" and "5000x4" in str(err.value)
    jpeg = encode(np.full((64, 64, 3), 90, np.uint8), ".jpg")
    with pytest.raises(PersonaError) as err:
        decode_image(jpeg[:40])  # header cut before the frame size
    assert err.value.reason == "bad_image"


def test_face_pose() -> None:
    xy = np.zeros((468, 2), np.float32)
    xy[33], xy[263], xy[1] = (100, 100), (200, 100), (150, 150)
    roll, yaw = face_pose(xy)
    assert abs(roll) < 1e-6 and abs(yaw) < 1e-6
    xy[1] = (185, 150)  # nose far towards one eye: turned
    assert face_pose(xy)[1] == pytest.approx(0.35)
    xy[263] = (200, 160)  # eyes on a slope: tilted
    assert face_pose(xy)[0] == pytest.approx(np.degrees(np.arctan2(60, 100)), abs=1e-4)


# -- image personas with the real models ---------------------------------------------------


def test_blank_image_has_no_face(image_store: PersonaStore) -> None:
    with pytest.raises(PersonaError) as err:
        image_store.create_from_image(encode(np.full((480, 640, 3), 128, np.uint8)), owner="k")
    assert err.value.reason == "no_face"


def test_not_an_image_is_unsupported(image_store: PersonaStore) -> None:
    with pytest.raises(PersonaError) as err:
        image_store.create_from_image(b"hello, I am a text file\n", owner="k")
    assert err.value.reason == "unsupported_type"


def test_real_portrait_becomes_a_persona(image_store: PersonaStore) -> None:
    data = eval_image(PORTRAIT).read_bytes()
    p = image_store.create_from_image(data, name="Presenter", owner="key_a")
    assert p.kind == "image" and p.name == "Presenter"
    h, w = p.texture.shape[:2]
    assert max(h, w) <= 512 and min(h, w) > 200
    lm = p.landmarks
    assert lm.shape == (468, 2)
    lo, hi = lm.min(axis=0), lm.max(axis=0)
    assert (lo >= 0).all() and hi[0] <= w and hi[1] <= h
    # the crop is the landmarks' box grown about 20 % on each side
    span = hi - lo
    assert 0.1 * span[0] < lo[0] < 0.3 * span[0] and 0.1 * span[1] < lo[1] < 0.3 * span[1]
    # the stored crop and points agree with a fresh measurement of the stored texture
    again = PersonaStore(image_store.root).get(p.id, "key_a")
    assert again is not None and again.texture.shape == p.texture.shape
    _, re_points, _ = image_store.measure_face(again.texture)
    assert np.median(np.linalg.norm(re_points - p.landmarks, axis=1)) < 0.03 * max(h, w)
    assert image_store.texture_png(p.id, "key_a")[:4] == b"\x89PNG"
    assert image_store.texture_png(p.id, "key_b") is None


def test_group_photo_is_refused(image_store: PersonaStore) -> None:
    with pytest.raises(PersonaError) as err:
        image_store.create_from_image(eval_image("insightface/t1.jpg").read_bytes(), owner="k")
    assert err.value.reason == "several_faces"
    assert "found 6 faces" in str(err.value)


def test_tiny_face_is_refused(image_store: PersonaStore) -> None:
    bgr = cv2.imread(str(eval_image(PORTRAIT)))
    small = cv2.resize(bgr, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA)  # face ~64 px
    canvas = np.full((640, 640, 3), 128, np.uint8)
    canvas[100 : 100 + small.shape[0], 100 : 100 + small.shape[1]] = small
    ok, buf = cv2.imencode(".png", canvas)
    with pytest.raises(PersonaError) as err:
        image_store.create_from_image(buf.tobytes(), owner="k")
    assert err.value.reason == "face_too_small" and "96 px" in str(err.value)


def test_tilted_face_is_refused(image_store: PersonaStore) -> None:
    bgr = cv2.imread(str(eval_image(PORTRAIT)))
    h, w = bgr.shape[:2]
    tilted = cv2.warpAffine(bgr, cv2.getRotationMatrix2D((w / 2, h / 2), 40, 1.0), (w, h), borderMode=cv2.BORDER_REPLICATE)
    ok, buf = cv2.imencode(".jpg", tilted)
    with pytest.raises(PersonaError) as err:
        image_store.create_from_image(buf.tobytes(), owner="k")
    assert err.value.reason == "not_frontal" and "tilted" in str(err.value)


def test_webp_upload_works(image_store: PersonaStore, tmp_path: Path) -> None:
    bgr = cv2.imread(str(eval_image(PORTRAIT)))
    ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 90])
    p = image_store.create_from_image(buf.tobytes(), owner="k")
    assert p.kind == "image"
    shutil.rmtree(image_store.root / p.id)
