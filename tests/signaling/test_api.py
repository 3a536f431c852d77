"""The HTTP API against a real node over loopback: every status code it promises."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from edge_server.node import Node
from signaling.models import SessionState
from signaling.service import PublishDenied
from tests.conftest import node_config
from tests.helpers import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def base(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}"


async def create(http: aiohttp.ClientSession, node: Node, body: dict | None = None, headers: dict | None = None):
    return await http.post(f"{base(node)}/v1/sessions", json=body if body is not None else {}, headers=AUTH if headers is None else headers)


async def test_create_returns_obs_settings_and_token(node: Node) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await create(http, node, {"mode": "anonymize", "targets": [{"url": "rtmp://live.example/app/SECRETKEY", "name": "twitch"}], "max_duration_s": 60})
        assert resp.status == 201
        body = await resp.json()
        assert resp.headers["Location"] == f"/v1/sessions/{body['id']}"
        assert body["rtmp"]["server_url"] == f"rtmp://127.0.0.1:{node.rtmp_port}/live"
        assert body["rtmp"]["stream_key"] == body["publish_token"]["token"]
        assert body["publish_token"]["expires_at"] > 0
        assert body["state"] == "idle" and body["mode"] == "anonymize" and body["max_duration_s"] == 60
        assert body["targets"] == [{"name": "twitch", "url": "rtmp://live.example/app/***"}]  # target keys never echoed
        # GET shows the session but never the stream key again
        resp = await http.get(f"{base(node)}/v1/sessions/{body['id']}", headers=AUTH)
        assert resp.status == 200
        got = await resp.json()
        assert got["id"] == body["id"] and "stream_key" not in got["rtmp"] and "publish_token" not in got
        resp = await http.get(f"{base(node)}/v1/sessions", headers=AUTH)
        assert [s["id"] for s in (await resp.json())["sessions"]] == [body["id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": "faceswap"}, "mode"),
        ({"mode": "persona"}, "persona"),
        ({"targets": ["http://example.com/x"]}, "targets[0].url"),
        ({"targets": [{"url": "rtmp://"}]}, "targets[0].url"),
        ({"targets": "rtmp://a/b"}, "targets"),
        ({"targets": ["rtmp://h/a/k"] * 9}, "targets"),
        ({"max_duration_s": 0}, "max_duration_s"),
        ({"max_duration_s": "10"}, "max_duration_s"),
        ({"colour": "red"}, "colour"),
        ([1, 2], "body"),
    ],
)
async def test_create_rejects_bad_fields_with_400(node: Node, body: object, field: str) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await create(http, node, body)  # type: ignore[arg-type]
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["field"] == field and error["status"] == 400


async def test_invalid_json_400_wrong_type_415_oversize_413(node: Node) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{base(node)}/v1/sessions"
        resp = await http.post(url, data=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"
        resp = await http.post(url, data=b"mode=anonymize", headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
        assert resp.status == 415
        big = b'{"persona": "' + b"x" * (2 << 20) + b'"}'
        resp = await http.post(url, data=big, headers={**AUTH, "Content-Type": "application/json"})
        assert resp.status == 413 and (await resp.json())["error"]["code"] == "body_too_large"


async def test_bad_api_key_401_and_not_logged(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "hk_wrong_key_that_must_never_appear_in_logs"
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": f"Bearer {wrong}"}, {"Authorization": f"Basic {wrong}"}):
            resp = await create(http, node, {}, headers=headers)
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
        resp = await http.get(f"{base(node)}/v1/sessions", headers={"Authorization": f"Bearer {wrong}"})
        assert resp.status == 401
    assert "rejected API request" in caplog.text
    assert wrong not in caplog.text


async def test_404_for_unknown_and_for_other_owners_sessions(tmp_path: Path) -> None:
    other = "hk_second_partner_key_0123456789abcdefghij"
    node = Node(node_config(tmp_path, auth__api_keys=[API_KEY, other]))
    await node.start()
    try:
        async with aiohttp.ClientSession() as http:
            created = await (await create(http, node, {})).json()
            resp = await http.get(f"{base(node)}/v1/sessions/ses_nope", headers=AUTH)
            assert resp.status == 404
            other_auth = {"Authorization": f"Bearer {other}"}
            resp = await http.get(f"{base(node)}/v1/sessions/{created['id']}", headers=other_auth)
            assert resp.status == 404
            resp = await http.delete(f"{base(node)}/v1/sessions/{created['id']}", headers=other_auth)
            assert resp.status == 404
            resp = await http.get(f"{base(node)}/v1/sessions", headers=other_auth)
            assert (await resp.json())["sessions"] == []
            resp = await http.get(f"{base(node)}/v1/nothing-here")
            assert resp.status == 404 and (await resp.json())["error"]["status"] == 404
            resp = await http.put(f"{base(node)}/v1/sessions", headers=AUTH)
            assert resp.status == 405
    finally:
        await node.stop()


async def test_patch_delete_and_409s(node: Node) -> None:
    async with aiohttp.ClientSession() as http:
        created = await (await create(http, node, {})).json()
        url = f"{base(node)}/v1/sessions/{created['id']}"
        resp = await http.patch(url, json={"mode": "blur", "targets": ["rtmps://live.example:443/app/k"]}, headers=AUTH)
        assert resp.status == 200
        body = await resp.json()
        assert body["mode"] == "blur" and body["targets"][0]["url"] == "rtmps://live.example:443/app/***"
        resp = await http.patch(url, json={"mode": "persona"}, headers=AUTH)
        assert resp.status == 400 and (await resp.json())["error"]["field"] == "persona"

        # a live session refuses a second publisher and changes to anything but its face and
        # targets (409); those change only where its stream runs (here the store says live, but this node
        # runs no stream for it: tests/edge_server/test_masked_relay_e2e.py switches a real one)
        session = await node.service.begin_publish(created["rtmp"]["stream_key"])
        assert session.state is SessionState.LIVE
        resp = await http.patch(url, json={"max_duration_s": 60, "mode": "pixelate"}, headers=AUTH)
        assert resp.status == 409 and (await resp.json())["error"]["field"] == "max_duration_s"
        resp = await http.patch(url, json={"mode": "pixelate"}, headers=AUTH)
        assert resp.status == 409 and "not on this node" in (await resp.json())["error"]["message"]
        assert (await (await http.get(url, headers=AUTH)).json())["mode"] == "blur"  # unchanged
        with pytest.raises(PublishDenied) as denied:
            await node.service.begin_publish(created["rtmp"]["stream_key"])
        assert denied.value.status == 409

        resp = await http.delete(url, headers=AUTH)
        assert resp.status == 200 and (await resp.json())["state"] == "ended"
        assert (await (await http.get(url, headers=AUTH)).json())["end_reason"] == "deleted"
        resp = await http.delete(url, headers=AUTH)
        assert resp.status == 409
        resp = await http.post(f"{url}/publish-token", headers=AUTH)
        assert resp.status == 409
        with pytest.raises(PublishDenied) as denied:
            await node.service.begin_publish(created["rtmp"]["stream_key"])
        assert denied.value.status == 401  # the token was revoked with the session


async def test_rotating_the_publish_token_revokes_the_old_one(node: Node) -> None:
    async with aiohttp.ClientSession() as http:
        created = await (await create(http, node, {})).json()
        resp = await http.post(f"{base(node)}/v1/sessions/{created['id']}/publish-token", headers=AUTH)
        assert resp.status == 201
        rotated = await resp.json()
        assert rotated["rtmp"]["stream_key"] != created["rtmp"]["stream_key"]
    with pytest.raises(PublishDenied) as denied:
        await node.service.begin_publish(created["rtmp"]["stream_key"])
    assert denied.value.status == 401 and denied.value.reason == "token revoked"
    assert (await node.service.begin_publish(rotated["rtmp"]["stream_key"])).id == created["id"]


async def test_node_full_503_with_retry_after(tmp_path: Path) -> None:
    node = Node(node_config(tmp_path, limits__max_sessions=2))
    await node.start()
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                assert (await create(http, node, {})).status == 201
            resp = await create(http, node, {})
            assert resp.status == 503 and resp.headers["Retry-After"] == "30"
    finally:
        await node.stop()


async def test_health_ready_and_metrics(node: Node) -> None:
    async with aiohttp.ClientSession() as http:
        assert (await http.get(f"{base(node)}/healthz")).status == 200
        resp = await http.get(f"{base(node)}/readyz")
        assert resp.status == 200 and (await resp.json())["ready"] is True
        resp = await http.get(f"{base(node)}/metrics")
        assert resp.status == 200
        text = await resp.text()
        assert "hikariedge_live_sessions" in text and "hikariedge_frames_out_all_total" in text
        node.live.set_accepting(False)
        assert (await http.get(f"{base(node)}/readyz")).status == 503
