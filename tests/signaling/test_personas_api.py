"""The personas API against a real node over loopback: every status code, ownership, and
the session check that a persona id must exist. Image cases with a real face read
../shared/eval and skip where it is absent."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest

from edge_server.node import Node
from pipeline.procedural import BUILTIN_PERSONAS, STYLES
from tests.conftest import node_config
from tests.helpers import API_KEY, have_shared_eval

AUTH = {"Authorization": f"Bearer {API_KEY}"}
OTHER_KEY = "hk_second_partner_key_0123456789abcdefghij"
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}
BUILTIN = BUILTIN_PERSONAS[0][0]


def base(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}"


def png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def portrait() -> bytes:
    root = have_shared_eval()
    if root is None:
        pytest.skip("../shared/eval is absent: uploading a real face needs a real portrait")
    return (root / "images" / "face_recognition" / "obama.jpg").read_bytes()


@pytest.fixture
async def two_key_node(tmp_path: Path):
    node = Node(node_config(tmp_path, auth__api_keys=[API_KEY, OTHER_KEY]))
    await node.start()
    yield node
    await node.stop()


async def test_procedural_create_get_list_texture_delete(two_key_node: Node) -> None:
    node = two_key_node
    url = f"{base(node)}/v1/personas"
    async with aiohttp.ClientSession() as http:
        resp = await http.post(url, json={"seed": 42, "style": "sharp", "name": "Forty-two"}, headers=AUTH)
        assert resp.status == 201, await resp.text()
        body = await resp.json()
        pid = body["id"]
        assert resp.headers["Location"] == f"/v1/personas/{pid}"
        assert body["kind"] == "procedural" and body["seed"] == 42 and body["style"] == "sharp"
        assert body["name"] == "Forty-two" and body["width"] > 0 and body["height"] > 0 and body["created_at"] > 0
        assert body["builtin"] is False and body["texture_url"] == f"/v1/personas/{pid}/texture.png"
        assert (Path(node.config.data_dir) / "personas" / pid / "persona.json").is_file()

        resp = await http.get(f"{url}/{pid}", headers=AUTH)
        assert resp.status == 200 and (await resp.json())["id"] == pid
        resp = await http.get(f"{url}/{pid}/texture.png", headers=AUTH)
        assert resp.status == 200 and resp.content_type == "image/png"
        tex = cv2.imdecode(np.frombuffer(await resp.read(), np.uint8), cv2.IMREAD_COLOR)
        assert tex.shape[:2] == (body["height"], body["width"])

        resp = await http.get(url, headers=AUTH)
        answer = await resp.json()
        listed = [p["id"] for p in answer["personas"]]
        assert listed == [pid, *(b[0] for b in BUILTIN_PERSONAS)]
        assert answer["styles"] == list(STYLES)  # what a procedural persona may be painted in

        # another key sees only the builtins and cannot read or delete mine
        resp = await http.get(url, headers=OTHER)
        assert [p["id"] for p in (await resp.json())["personas"]] == [b[0] for b in BUILTIN_PERSONAS]
        for method, path in (("GET", f"{url}/{pid}"), ("GET", f"{url}/{pid}/texture.png"), ("DELETE", f"{url}/{pid}")):
            resp = await http.request(method, path, headers=OTHER)
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"

        resp = await http.delete(f"{url}/{pid}", headers=AUTH)
        assert resp.status == 204
        resp = await http.get(f"{url}/{pid}", headers=AUTH)
        assert resp.status == 404
        resp = await http.delete(f"{url}/{pid}", headers=AUTH)
        assert resp.status == 404


async def test_builtins_visible_and_undeletable(node: Node) -> None:
    url = f"{base(node)}/v1/personas"
    async with aiohttp.ClientSession() as http:
        resp = await http.get(f"{url}/{BUILTIN}", headers=AUTH)
        body = await resp.json()
        assert resp.status == 200 and body["kind"] == "builtin" and body["builtin"] is True
        resp = await http.get(f"{url}/{BUILTIN}/texture.png", headers=AUTH)
        assert resp.status == 200 and (await resp.read())[:4] == b"\x89PNG"
        resp = await http.delete(f"{url}/{BUILTIN}", headers=AUTH)
        assert resp.status == 403
        error = (await resp.json())["error"]
        assert error["code"] == "builtin_persona" and "cannot be deleted" in error["message"]


async def test_auth_required(node: Node) -> None:
    url = f"{base(node)}/v1/personas"
    async with aiohttp.ClientSession() as http:
        for method, path in (("GET", url), ("POST", url), ("GET", f"{url}/{BUILTIN}"), ("GET", f"{url}/{BUILTIN}/texture.png"), ("DELETE", f"{url}/{BUILTIN}")):
            resp = await http.request(method, path, json={"seed": 1}, headers={"Authorization": "Bearer hk_nope"})
            assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
            assert (await resp.json())["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"seed": "7"}, "seed"),
        ({"seed": True}, "seed"),
        ({"seed": -3}, "seed"),
        ({"seed": 1, "style": "cubist"}, "style"),
        ({"seed": 1, "name": 5}, "name"),
        ({"seed": 1, "name": "x" * 65}, "name"),
        ({"seed": 1, "colour": "red"}, "colour"),
        ([1], "body"),
    ],
)
async def test_bad_json_fields_400(node: Node, body: object, field: str) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{base(node)}/v1/personas", json=body, headers=AUTH)
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["field"] == field and error["status"] == 400


async def test_upload_errors(node: Node) -> None:
    url = f"{base(node)}/v1/personas"
    async with aiohttp.ClientSession() as http:
        resp = await http.post(url, data=b"{broken", headers={**AUTH, "Content-Type": "application/json"})
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"
        resp = await http.post(url, data=b"GIF89a....", headers={**AUTH, "Content-Type": "image/gif"})
        assert resp.status == 415
        resp = await http.post(url, data=b"plain text", headers={**AUTH, "Content-Type": "text/plain"})
        assert resp.status == 415
        resp = await http.post(url, data=b"not really a png", headers={**AUTH, "Content-Type": "image/png"})
        assert resp.status == 415 and "JPEG, PNG or WebP" in (await resp.json())["error"]["message"]
        blank = png(np.full((360, 480, 3), 128, np.uint8))
        resp = await http.post(url, data=blank, headers={**AUTH, "Content-Type": "image/png"})
        assert resp.status == 422
        error = (await resp.json())["error"]
        assert error["code"] == "no_face" and error["status"] == 422
        # over the 8 MB image limit (bigger than the node's 1 MB generic body limit)
        big = b"\xff\xd8\xff" + b"\0" * ((8 << 20) + 10)
        resp = await http.post(url, data=big, headers={**AUTH, "Content-Type": "image/jpeg"})
        assert resp.status == 413 and (await resp.json())["error"]["code"] == "body_too_large"
        form = aiohttp.FormData()
        form.add_field("image", big, filename="big.jpg", content_type="image/jpeg")
        resp = await http.post(url, data=form, headers=AUTH)
        assert resp.status == 413
        # a 2 MB image is over the generic limit but within the image limit: it gets read and judged
        noise = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), np.uint8)
        data = png(noise)
        assert (1 << 20) < len(data) < (8 << 20)
        resp = await http.post(url, data=data, headers={**AUTH, "Content-Type": "image/png"})
        assert resp.status == 422 and (await resp.json())["error"]["code"] == "no_face"
        form = aiohttp.FormData()
        form.add_field("name", "no image here")
        resp = await http.post(url, data=form, headers=AUTH)  # urlencoded without a file part
        assert resp.status == 415
        form = aiohttp.FormData()
        form.add_field("name", "no image here")
        form.add_field("other", b"x", filename="x.bin", content_type="application/octet-stream")
        resp = await http.post(url, data=form, headers=AUTH)
        assert resp.status == 400 and (await resp.json())["error"]["field"] == "other"


async def test_real_face_upload_multipart_and_raw(node: Node) -> None:
    data = portrait()
    url = f"{base(node)}/v1/personas"
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("name", "Presenter")
        form.add_field("image", data, filename="face.jpg", content_type="image/jpeg")
        resp = await http.post(url, data=form, headers=AUTH)
        assert resp.status == 201, await resp.text()
        body = await resp.json()
        assert body["kind"] == "image" and body["name"] == "Presenter" and max(body["width"], body["height"]) <= 512
        resp = await http.post(f"{url}?name=Raw", data=data, headers={**AUTH, "Content-Type": "image/jpeg"})
        assert resp.status == 201
        assert (await resp.json())["name"] == "Raw"
        root = have_shared_eval()
        assert root is not None
        group = (root / "images" / "insightface" / "t1.jpg").read_bytes()
        resp = await http.post(url, data=group, headers={**AUTH, "Content-Type": "image/jpeg"})
        assert resp.status == 422
        error = (await resp.json())["error"]
        assert error["code"] == "several_faces" and "6 faces" in error["message"]
        # the persona drives a session, and the node resolves it for the live pipeline
        resp = await http.post(f"{base(node)}/v1/sessions", json={"mode": "persona", "persona": body["id"]}, headers=AUTH)
        assert resp.status == 201
        session = await resp.json()
        stored = await node.store.get(session["id"])
        persona = node.resolve_persona(stored.persona, stored.owner)
        assert persona is not None and persona.id == body["id"] and persona.kind == "image"


async def test_session_needs_a_visible_persona(two_key_node: Node) -> None:
    node = two_key_node
    sessions = f"{base(node)}/v1/sessions"
    async with aiohttp.ClientSession() as http:
        resp = await http.post(sessions, json={"mode": "persona", "persona": "p_doesnotexist_0123456789"}, headers=AUTH)
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["field"] == "persona" and error["code"] == "unknown_persona" and "POST /v1/personas" in error["message"]

        mine = await (await http.post(f"{base(node)}/v1/personas", json={"seed": 3}, headers=AUTH)).json()
        resp = await http.post(sessions, json={"mode": "persona", "persona": mine["id"]}, headers=OTHER)
        assert resp.status == 400 and (await resp.json())["error"]["field"] == "persona"  # not theirs

        resp = await http.post(sessions, json={"mode": "persona", "persona": mine["id"]}, headers=AUTH)
        assert resp.status == 201
        created = await resp.json()
        assert created["persona"] == mine["id"]
        resp = await http.post(sessions, json={"mode": "persona", "persona": BUILTIN}, headers=OTHER)
        assert resp.status == 201  # builtins are everyone's
        assert node.resolve_persona(BUILTIN) is not None

        # PATCH checks too
        resp = await http.patch(f"{sessions}/{created['id']}", json={"persona": "p_gone_00000000000000000"}, headers=AUTH)
        assert resp.status == 400 and (await resp.json())["error"]["field"] == "persona"
        resp = await http.patch(f"{sessions}/{created['id']}", json={"persona": BUILTIN}, headers=AUTH)
        assert resp.status == 200 and (await resp.json())["persona"] == BUILTIN

        # a deleted persona resolves to None: the masker falls back to an ephemeral face
        resp = await http.delete(f"{base(node)}/v1/personas/{mine['id']}", headers=AUTH)
        assert resp.status == 204
        assert node.resolve_persona(mine["id"], "whoever") is None
