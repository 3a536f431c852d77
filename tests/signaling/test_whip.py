"""WHIP/WHEP and play tokens against a real node over loopback: every status code they promise.

Offers come from real aiortc peer connections; most tests need no media to flow (the
answer is not applied), the end-to-end media tests are in tests/edge_server/webrtc."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiortc import RTCPeerConnection

from edge_server.node import Node
from tests.conftest import node_config
from tests.edge_server.webrtc.client import client_pc, local_offer, prefer
from tests.helpers import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SDP = {"Content-Type": "application/sdp"}
FRAG = {"Content-Type": "application/trickle-ice-sdpfrag"}


def rtc_config(tmp_path: Path, **overrides: object):
    return node_config(tmp_path, **{"pipeline__processor": "identity", "webrtc__allow_loopback": True, **overrides})


@pytest_asyncio.fixture
async def rtc_node(tmp_path: Path):
    node = Node(rtc_config(tmp_path))
    await node.start()
    yield node
    await node.stop()


@pytest_asyncio.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def base(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}"


async def create(http: aiohttp.ClientSession, node: Node) -> dict:
    resp = await http.post(f"{base(node)}/v1/sessions", json={}, headers=AUTH)
    assert resp.status == 201
    return await resp.json()


async def play_token(http: aiohttp.ClientSession, node: Node, session_id: str, **body: object) -> str:
    resp = await http.post(f"{base(node)}/v1/sessions/{session_id}/play-tokens", json=body, headers=AUTH)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["token"]


class Offers:
    """Real offers from aiortc; the peer connections are closed at the end of the test."""

    def __init__(self) -> None:
        self.pcs: list[RTCPeerConnection] = []

    async def make(self, video: str | None = "sendonly", audio: str | None = "sendonly", video_codec: str = "video/H264") -> str:
        pc = client_pc()
        self.pcs.append(pc)
        if video:
            prefer(pc.addTransceiver("video", direction=video), "video", video_codec)
        if audio:
            pc.addTransceiver("audio", direction=audio)
        return await local_offer(pc)

    async def close(self) -> None:
        for pc in self.pcs:
            await pc.close()


@pytest_asyncio.fixture
async def offers():
    made = Offers()
    yield made
    await made.close()


async def test_session_json_carries_whip_and_whep_and_play_tokens_are_issued(rtc_node: Node, http: aiohttp.ClientSession) -> None:
    session = await create(http, rtc_node)
    assert session["whip"]["url"] == f"{base(rtc_node)}/whip/{session['id']}"
    assert session["whip"]["bearer_token"] == session["publish_token"]["token"]
    assert session["whep"]["url"] == f"{base(rtc_node)}/whep/{session['id']}"
    got = await (await http.get(f"{base(rtc_node)}/v1/sessions/{session['id']}", headers=AUTH)).json()
    assert "bearer_token" not in got["whip"] and got["whep"]["url"] == session["whep"]["url"]

    url = f"{base(rtc_node)}/v1/sessions/{session['id']}/play-tokens"
    resp = await http.post(url, headers=AUTH)  # no body: the configured default lifetime
    assert resp.status == 201
    body = await resp.json()
    assert body["whep_url"] == session["whep"]["url"] and body["token"] != session["publish_token"]["token"]
    resp = await http.post(url, json={"ttl_s": 60}, headers=AUTH)
    issued = await resp.json()
    assert resp.status == 201 and 55 <= issued["expires_at"] - time.time() <= 61
    assert rtc_node.service.issuer.verify(issued["token"], "play").session_id == session["id"]
    for bad in ({"ttl_s": 0}, {"ttl_s": "60"}, {"ttl_s": 10**9}, {"ttl": 5}, [1]):
        resp = await http.post(url, json=bad, headers=AUTH)
        assert resp.status == 400, bad
    assert (await http.post(url, data=b"ttl_s=5", headers={**AUTH, "Content-Type": "text/plain"})).status == 415
    assert (await http.post(url)).status == 401
    assert (await http.post(f"{base(rtc_node)}/v1/sessions/ses_nope/play-tokens", headers=AUTH)).status == 404
    await http.delete(f"{base(rtc_node)}/v1/sessions/{session['id']}", headers=AUTH)
    assert (await http.post(url, headers=AUTH)).status == 409


async def test_options_answer_accept_post_and_cors(rtc_node: Node, http: aiohttp.ClientSession) -> None:
    session = await create(http, rtc_node)
    for protocol in ("whip", "whep"):
        resp = await http.options(f"{base(rtc_node)}/{protocol}/{session['id']}")
        assert resp.status == 204
        assert resp.headers["Accept-Post"] == "application/sdp"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
        assert "Location" in resp.headers["Access-Control-Expose-Headers"]
        resp = await http.options(f"{base(rtc_node)}/{protocol}/{session['id']}/anything")
        assert resp.status == 204 and resp.headers["Accept-Patch"] == "application/trickle-ice-sdpfrag"


async def test_whip_post_status_codes(rtc_node: Node, http: aiohttp.ClientSession, offers: Offers,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    session = await create(http, rtc_node)
    other = await create(http, rtc_node)
    url, token = session["whip"]["url"], session["whip"]["bearer_token"]
    offer = await offers.make()
    bearer = {"Authorization": f"Bearer {token}"}

    resp = await http.post(url, data=offer, headers={**bearer, "Content-Type": "application/json"})
    assert resp.status == 415
    forged = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    for headers in ({}, {"Authorization": f"Bearer {forged}"}, {"Authorization": f"Basic {token}"},
                    {"Authorization": f"Bearer {other['whip']['bearer_token']}"},  # another session's key
                    {"Authorization": f"Bearer {await play_token(http, rtc_node, session['id'])}"}):  # wrong scope
        resp = await http.post(url, data=offer, headers={**headers, **SDP})
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    assert forged not in caplog.text and token not in caplog.text and "WHIP publish refused" in caplog.text
    for garbage in ("not sdp at all", "v=0\r\n", await offers.make(video=None)):
        resp = await http.post(url, data=garbage, headers={**bearer, **SDP})
        assert resp.status == 400, garbage[:40]
        assert (await resp.json())["error"]["code"] == "invalid_sdp"
    assert (await http.get(f"{base(rtc_node)}/v1/sessions/{session['id']}", headers=AUTH)).status == 200
    assert rtc_node.live.stats(session["id"]) is None, "refused offers never make the session live"

    resp = await http.post(url, data=offer, headers={**bearer, **SDP})
    assert resp.status == 201
    location = resp.headers["Location"]
    assert location.startswith(f"/whip/{session['id']}/") and len(location.rsplit("/", 1)[1]) >= 32
    assert resp.headers["ETag"].startswith('"') and resp.content_type == "application/sdp"
    assert resp.headers["Accept-Patch"] == "application/trickle-ice-sdpfrag"
    assert "a=candidate:" in await resp.text() and "127.0.0.1" in await resp.text()  # allow_loopback
    live = await (await http.get(f"{base(rtc_node)}/v1/sessions/{session['id']}", headers=AUTH)).json()
    assert live["state"] == "live" and live["live"]["protocol"] == "whip"
    assert location.rsplit("/", 1)[1] not in caplog.text, "the resource URL is a capability: never logged"

    resp = await http.post(url, data=await offers.make(), headers={**bearer, **SDP})
    assert resp.status == 409  # already live

    assert (await http.delete(f"{base(rtc_node)}/whip/{session['id']}/not-a-resource")).status == 404
    assert (await http.delete(f"{base(rtc_node)}/whip/{other['id']}/{location.rsplit('/', 1)[1]}")).status == 404
    assert (await http.delete(f"{base(rtc_node)}/whep/{session['id']}/{location.rsplit('/', 1)[1]}")).status == 404
    resp = await http.delete(base(rtc_node) + location)
    assert resp.status == 200
    assert (await (await http.get(f"{base(rtc_node)}/v1/sessions/{session['id']}", headers=AUTH)).json())["state"] == "idle"
    assert (await http.delete(base(rtc_node) + location)).status == 404
    assert (await http.get(base(rtc_node) + location)).status == 405

    # live over RTMP (the same state machine): WHIP gets 409; an ended session: 404
    await rtc_node.service.begin_publish(other["rtmp"]["stream_key"])
    resp = await http.post(other["whip"]["url"], data=offer, headers={"Authorization": f"Bearer {other['whip']['bearer_token']}", **SDP})
    assert resp.status == 409
    await http.delete(f"{base(rtc_node)}/v1/sessions/{session['id']}", headers=AUTH)
    rotated = rtc_node.service.issuer.issue(session["id"], "publish", 60)  # a valid token of an ended session
    resp = await http.post(url, data=offer, headers={"Authorization": f"Bearer {rotated.token}", **SDP})
    assert resp.status in (401, 404)  # its id was never the session's current one: 401


async def test_whip_503_with_retry_after_when_the_node_is_full(tmp_path: Path, http: aiohttp.ClientSession, offers: Offers) -> None:
    node = Node(rtc_config(tmp_path, limits__max_live_sessions=1))
    await node.start()
    try:
        first, second = await create(http, node), await create(http, node)
        await node.service.begin_publish(first["rtmp"]["stream_key"])
        resp = await http.post(second["whip"]["url"], data=await offers.make(),
                               headers={"Authorization": f"Bearer {second['whip']['bearer_token']}", **SDP})
        assert resp.status == 503 and resp.headers["Retry-After"] == "30"
    finally:
        await node.stop()


async def test_patch_trickle_and_its_preconditions(rtc_node: Node, http: aiohttp.ClientSession, offers: Offers) -> None:
    session = await create(http, rtc_node)
    offer = await offers.make()
    resp = await http.post(session["whip"]["url"], data=offer, headers={"Authorization": f"Bearer {session['whip']['bearer_token']}", **SDP})
    assert resp.status == 201
    resource, etag = base(rtc_node) + resp.headers["Location"], resp.headers["ETag"]
    ufrag = next(line.split(":", 1)[1] for line in offer.splitlines() if line.startswith("a=ice-ufrag:"))
    pwd = next(line.split(":", 1)[1] for line in offer.splitlines() if line.startswith("a=ice-pwd:"))
    candidate = "a=candidate:1 1 udp 2122260223 127.0.0.1 61764 typ host\r\n"
    frag = f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n{candidate}"

    assert (await http.patch(resource, data=frag, headers=FRAG)).status == 428
    assert (await http.patch(resource, data=frag, headers={**FRAG, "If-Match": '"not-the-etag"'})).status == 412
    assert (await http.patch(resource, data=frag, headers={"Content-Type": "application/sdp", "If-Match": etag})).status == 415
    assert (await http.patch(resource, data="a=candidate:1 1 udp\r\n", headers={**FRAG, "If-Match": etag})).status == 400
    restart = frag.replace(f"a=ice-ufrag:{ufrag}", "a=ice-ufrag:zzzz").replace(f"a=ice-pwd:{pwd}", "a=ice-pwd:zzzzzzzzzzzzzzzzzzzzzzzz")
    resp = await http.patch(resource, data=restart, headers={**FRAG, "If-Match": "*"})
    assert resp.status == 422 and (await resp.json())["error"]["code"] == "ice_restart_unsupported"
    resp = await http.patch(resource, data=frag, headers={**FRAG, "If-Match": etag})
    assert resp.status == 204 and resp.headers["ETag"] == etag
    resp = await http.patch(resource, data=candidate + "a=end-of-candidates\r\n", headers={**FRAG, "If-Match": "*"})
    assert resp.status == 204
    assert (await http.patch(f"{resource}x", data=frag, headers={**FRAG, "If-Match": "*"})).status == 404
    assert (await http.delete(resource)).status == 200
    assert (await http.patch(resource, data=frag, headers={**FRAG, "If-Match": "*"})).status == 404


async def test_whep_status_codes(tmp_path: Path, http: aiohttp.ClientSession, offers: Offers, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    node = Node(rtc_config(tmp_path, webrtc__max_viewers_per_session=1))
    await node.start()
    try:
        session = await create(http, node)
        url = session["whep"]["url"]
        token = await play_token(http, node, session["id"], ttl_s=30)
        play = {"Authorization": f"Bearer {token}"}
        viewer_offer = await offers.make(video="recvonly", audio="recvonly")

        assert (await http.post(url, data=viewer_offer, headers={**play, "Content-Type": "text/plain"})).status == 415
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {session['publish_token']['token']}"}):
            assert (await http.post(url, data=viewer_offer, headers={**headers, **SDP})).status == 401
        assert token not in caplog.text
        assert (await http.post(url, data=await offers.make(), headers={**play, **SDP})).status == 400  # sends, not receives
        vp8 = await offers.make(video="recvonly", audio=None, video_codec="video/VP8")
        resp = await http.post(url, data=vp8, headers={**play, **SDP})
        assert resp.status == 400 and "H.264" in (await resp.json())["error"]["message"]

        resp = await http.post(url, data=viewer_offer, headers={**play, **SDP})  # an idle session may be watched
        assert resp.status == 201
        answer = await resp.text()
        assert "a=sendonly" in answer and "H264/90000" in answer and "VP8" not in answer and "opus/48000" in answer
        location = resp.headers["Location"]
        assert location.startswith(f"/whep/{session['id']}/") and resp.headers["ETag"]
        assert node.metrics.registry.get_sample_value("hikariedge_whep_viewers", {"session": session["id"]}) == 1

        resp = await http.post(url, data=await offers.make(video="recvonly", audio="recvonly"), headers={**play, **SDP})
        assert resp.status == 503 and resp.headers["Retry-After"] == "30"  # max_viewers_per_session

        assert (await http.delete(base(node) + location)).status == 200
        assert (await http.delete(base(node) + location)).status == 404
        assert node.live.viewer_count(session["id"]) == 0

        await http.delete(f"{base(node)}/v1/sessions/{session['id']}", headers=AUTH)
        assert (await http.post(url, data=viewer_offer, headers={**play, **SDP})).status == 404  # ended

        metrics = await (await http.get(f"{base(node)}/metrics")).text()
        assert 'hikariedge_webrtc_requests_total{method="POST",protocol="whep",status="201"} 1.0' in metrics
        assert 'hikariedge_webrtc_requests_total{method="POST",protocol="whep",status="401"} 3.0' in metrics
        assert 'hikariedge_webrtc_requests_total{method="DELETE",protocol="whep",status="200"} 1.0' in metrics
    finally:
        await node.stop()


async def test_webrtc_can_be_switched_off(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    node = Node(rtc_config(tmp_path, webrtc__enabled=False))
    await node.start()
    try:
        session = await create(http, node)
        assert "whip" not in session and "whep" not in session
        assert (await http.post(f"{base(node)}/whip/{session['id']}", data="v=0", headers=SDP)).status == 404
    finally:
        await node.stop()


def answer_candidates(answer: str) -> set[str]:
    return {line.split()[4] for line in answer.splitlines() if line.startswith("a=candidate:")}


@pytest.mark.parametrize(
    ("overrides", "expect"),
    [
        ({"webrtc__allow_loopback": False}, lambda found: "127.0.0.1" not in found),
        ({"webrtc__allow_loopback": False, "webrtc__host_addresses": ["127.0.0.1"]}, lambda found: found == {"127.0.0.1"}),
        ({"webrtc__public_ip": "198.51.100.7"}, lambda found: "198.51.100.7" in found and len(found) >= 2),
    ],
)
async def test_answer_candidates_follow_the_config(tmp_path: Path, http: aiohttp.ClientSession, offers: Offers,
                                                   overrides: dict, expect) -> None:
    node = Node(rtc_config(tmp_path, **overrides))
    await node.start()
    try:
        session = await create(http, node)
        token = await play_token(http, node, session["id"])
        resp = await http.post(session["whep"]["url"], data=await offers.make(video="recvonly", audio=None),
                               headers={"Authorization": f"Bearer {token}", **SDP})
        assert resp.status == 201
        found = answer_candidates(await resp.text())
        assert expect(found), found
    finally:
        await node.stop()


async def test_peers_that_never_connect_are_dropped(tmp_path: Path, http: aiohttp.ClientSession, offers: Offers) -> None:
    node = Node(rtc_config(tmp_path, webrtc__connect_timeout_s=0.3))
    await node.start()
    try:
        session = await create(http, node)
        resp = await http.post(session["whip"]["url"], data=await offers.make(),
                               headers={"Authorization": f"Bearer {session['whip']['bearer_token']}", **SDP})
        assert resp.status == 201  # the answer is never applied: no ICE, no media
        token = await play_token(http, node, session["id"])
        resp = await http.post(session["whep"]["url"], data=await offers.make(video="recvonly"),
                               headers={"Authorization": f"Bearer {token}", **SDP})
        assert resp.status == 201 and node.live.viewer_count(session["id"]) == 1
        for _ in range(60):
            state = (await (await http.get(f"{base(node)}/v1/sessions/{session['id']}", headers=AUTH)).json())["state"]
            if state == "idle" and node.live.viewer_count() == 0:
                break
            await asyncio.sleep(0.05)
        assert state == "idle" and node.live.viewer_count() == 0 and not node.webrtc.peers()
    finally:
        await node.stop()
