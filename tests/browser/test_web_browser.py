"""The web page in a real browser: Debian's Chromium driven by Playwright, against a real node.

The studio page (/) publishes Chromium's fake camera (a .y4m made from an eval clip at test
time, in tmp) over WHIP and plays the masked result over WHEP; a second page, the embeddable
player (/embed/{session}?token=...), plays it too. The player's picture is screenshotted and
checked with the eval recognizer: the publisher's identity must not be in it, and the face
region must differ from the raw input while the rest of the picture matches it.

Needs /usr/bin/chromium (scripts/test.sh installs it with apt-get where it can) and the
`playwright` package (the test extras); skips with a message without them. Playwright's own
browser download is never used.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import av
import cv2
import numpy as np
import pytest
import pytest_asyncio

from edge_server.node import Node
from tests.conftest import node_config
from tests.helpers import API_KEY, analyse_flv, ffmpeg_exe, have_shared_eval, start_receiver

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("HIKARIEDGE_CHROMIUM", "/usr/bin/chromium")
LEAK_COSINE = 0.35  # shared/eval/README: same person 0.57-0.74, different people ~0.0
SIZE = (640, 360)
CLIP_S = 4

playwright_api = pytest.importorskip("playwright.async_api", reason="the browser tests need the playwright package (pip install -e '.[test]')")
if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"the browser tests need Chromium at {CHROMIUM} (apt-get install chromium; scripts/test.sh does it as root)", allow_module_level=True)


# -- media -------------------------------------------------------------------------------------


def make_camera_y4m(path: Path) -> tuple[Path, bool]:
    """Chromium's fake camera input: CLIP_S seconds of lp_s18 (a real face) at 640x360, or a
    synthetic pattern without ../shared/eval. Returns (path, has_real_face)."""
    eval_dir = have_shared_eval()
    scale = f"scale={SIZE[0]}:{SIZE[1]},fps=30,format=yuv420p"
    if eval_dir is not None:
        source = ["-i", str(eval_dir / "videos" / "lp_s18.mp4")]
    else:
        source = ["-f", "lavfi", "-i", f"testsrc2=size={SIZE[0]}x{SIZE[1]}:rate=30"]
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", *source, "-t", str(CLIP_S), "-vf", scale, "-an", str(path)], check=True)
    return path, eval_dir is not None


def read_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


# -- fixtures ----------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def web_node(tmp_path: Path) -> AsyncIterator[Node]:
    # the node's default processor (mask); loopback ICE so the browser and the node meet on this host
    node = Node(node_config(tmp_path, webrtc__allow_loopback=True))
    await node.start()
    yield node
    await node.stop()


@pytest.fixture(scope="module")
def camera(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    return make_camera_y4m(tmp_path_factory.mktemp("camera") / "camera.y4m")


@pytest_asyncio.fixture
async def browser(camera: tuple[Path, bool]) -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={camera[0]}",
                # plain host addresses, not mDNS names: aioice would try to resolve those (1 s
                # each, and its mDNS socket is per process, which outlives one test's event loop)
                "--disable-features=WebRtcHideLocalIpsWithMdns",
            ],
        )
        try:
            yield chromium
        finally:
            await chromium.close()


class PageLog:
    """Console lines and page errors, to assert no CSP violation and no token in any log line."""

    def __init__(self, page: Any) -> None:
        self.lines: list[str] = []
        page.on("console", lambda message: self.lines.append(f"console.{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.lines.append(f"pageerror: {error}"))

    def check(self, *secrets: str) -> None:
        text = "\n".join(self.lines)
        assert "Content Security Policy" not in text, text
        assert "pageerror" not in text, text
        for secret in secrets:
            assert secret not in text, "a token or key reached the browser console"


def base(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}"


async def play_token(node: Node, session_id: str) -> str:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{base(node)}/v1/sessions/{session_id}/play-tokens", json={"ttl_s": 120},
                               headers={"Authorization": f"Bearer {API_KEY}"})
        assert resp.status == 201
        return (await resp.json())["token"]


async def wait_until(condition, timeout: float, what: str, interval: float = 0.25) -> Any:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


VIDEO_PROGRESS = """(id) => { const v = document.getElementById(id); return v ? [v.videoWidth, v.videoHeight, v.currentTime] : null; }"""


async def wait_playing(page: Any, element_id: str, timeout: float) -> None:
    first = await wait_until(lambda: _has_frames(page, element_id), timeout, f"#{element_id} to show frames")

    async def advanced() -> bool:
        now = await page.evaluate(VIDEO_PROGRESS, element_id)
        return bool(now and now[2] > first[2] + 0.5)

    await wait_until(advanced, timeout, f"#{element_id} to keep playing")


async def _has_frames(page: Any, element_id: str) -> Any:
    state = await page.evaluate(VIDEO_PROGRESS, element_id)
    return state if state and state[0] > 0 else None


# -- masking check -----------------------------------------------------------------------------


def check_masked(shot_path: Path, source: list[np.ndarray], has_face: bool, face_diff_floor: float = 20.0) -> str | None:
    """The played picture is the stream (the background matches a source frame) with the face
    replaced (that region differs, and the recognizer does not find the publisher in it).
    ``face_diff_floor``: how much the face region must differ at least (a pixelated face keeps
    its average colours, so it differs less than a swapped one).
    Returns why the masking part could not be checked (no face in the camera), else None."""
    shot = cv2.cvtColor(cv2.imread(str(shot_path)), cv2.COLOR_BGR2RGB)
    assert shot.shape[:2] == (SIZE[1], SIZE[0]), f"screenshot {shot_path} is {shot.shape}, expected {SIZE}"
    small = cv2.resize(shot, (160, 90), interpolation=cv2.INTER_AREA).astype(np.float32)
    diffs = [np.abs(cv2.resize(f, (160, 90), interpolation=cv2.INTER_AREA).astype(np.float32) - small).mean() for f in source]
    best = int(np.argmin(diffs))
    frame = source[best]
    if not has_face:
        # synthetic camera: no face to mask, so only "the player shows the stream" can be checked
        assert diffs[best] < 25, f"the played picture ({shot_path}) does not look like the published one (diff {diffs[best]:.1f})"
        return "../shared/eval is absent: the synthetic camera shows no face, so the masking assertion did not run (the stream did play)"

    from bench.eval_lib import IndependentYuNet, Recognizer, align_face, alignment_matrix, cosine

    eval_dir = have_shared_eval()
    assert eval_dir is not None
    detector, recognizer = IndependentYuNet(eval_dir), Recognizer(eval_dir)
    faces = detector.detect(frame)
    assert faces, "lp_s18 shows a face in every frame"
    face = max(faces, key=lambda f: f.size)
    x0, y0, x1, y1 = (int(v) for v in face.box)
    pad = int(0.35 * max(x1 - x0, y1 - y0))
    outside = np.ones(shot.shape[:2], bool)
    outside[max(0, y0 - 2 * pad): y1 + pad, max(0, x0 - pad): x1 + pad] = False
    diff = np.abs(shot.astype(np.float32) - frame.astype(np.float32)).mean(axis=2)
    background, face_region = float(diff[outside].mean()), float(diff[y0:y1, x0:x1].mean())

    # the publisher's identity: the mean embedding of the face over several source frames
    refs = []
    for f in source[:: max(1, len(source) // 8)]:
        found = detector.detect(f)
        if found:
            refs.append(recognizer.embed(align_face(f, max(found, key=lambda g: g.size).kps))[0])
    identity = np.mean(refs, axis=0)
    same_place = cosine(recognizer.embed(align_face(shot, matrix=alignment_matrix(face.kps)))[0], identity)
    played_faces = [cosine(recognizer.embed(align_face(shot, g.kps))[0], identity) for g in detector.detect(shot)]
    report = (f"screenshot {shot_path}: closest source frame {best} (mean diff {diffs[best]:.1f}); background diff "
              f"{background:.1f}, face diff {face_region:.1f}; cosine to the publisher at the face's place {same_place:.3f}, "
              f"of faces found in the screenshot {[round(c, 3) for c in played_faces]}")
    assert background < 20, "the played picture is not the published stream: " + report
    assert face_region > max(face_diff_floor, 2 * background), "the face region is (nearly) the raw input: " + report
    assert same_place < LEAK_COSINE, "the publisher's identity reaches the viewer: " + report
    assert all(c < LEAK_COSINE for c in played_faces), "a face in the played picture is the publisher: " + report
    print(report)
    return None


# -- tests -------------------------------------------------------------------------------------


async def test_studio_publishes_the_camera_and_the_embed_player_shows_it_masked(
    web_node: Node, browser: Any, camera: tuple[Path, bool], tmp_path: Path
) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    studio = await context.new_page()
    studio_log = PageLog(studio)
    response = await studio.goto(base(web_node) + "/")
    assert response is not None and response.status == 200
    await studio.fill("#api-key", API_KEY)
    await studio.click("#connect")
    await studio.wait_for_selector("#live-form:not([disabled])", timeout=10_000)
    assert await studio.input_value("#api-key") == "", "the key is not left in the field"
    assert API_KEY not in await studio.content(), "the page never shows the API key"
    assert await studio.evaluate("() => sessionStorage.getItem('hikariedge.apiKey')") == API_KEY
    faces = await studio.eval_on_selector_all("#face option", "els => els.map(e => e.value)")
    assert "anonymize" in faces and "persona:builtin-soft" in faces, faces
    await studio.select_option("#face", "anonymize")
    # a restream target, as a platform gives it: server and stream key
    stream_key = "live_4242_sEcReTsTrEaMkEy"
    target = start_receiver(tmp_path / "restream.flv", key=stream_key)
    await studio.click("#add-target summary")
    await studio.fill("#target-name", "rx")
    await studio.fill("#target-server", target.url.rsplit("/", 1)[0])
    await studio.fill("#target-key", stream_key)
    await studio.click("#add-target-button")
    listed = (await studio.text_content("#target-list")) or ""
    assert listed.startswith("rx: ") and "/app/***" in listed and stream_key not in listed, listed
    assert await studio.input_value("#target-key") == ""
    await studio.click("#start")
    await studio.wait_for_selector("#state[data-state='live']", timeout=20_000)
    session_id = (await studio.text_content("#session-id") or "").strip()
    assert session_id.startswith("ses_"), session_id
    await wait_playing(studio, "remote", 25)  # the studio's own WHEP viewer

    # a partner's player on a second page, at exactly the published size
    token = await play_token(web_node, session_id)
    embed_context = await browser.new_context(viewport={"width": SIZE[0], "height": SIZE[1]})
    player = await embed_context.new_page()
    player_log = PageLog(player)
    response = await player.goto(f"{base(web_node)}/embed/{session_id}?token={token}")
    assert response is not None and response.status == 200
    await wait_playing(player, "video", 20)
    await asyncio.sleep(1.0)  # past the fail-closed cover of the first frames
    assert await player.is_hidden("#message")
    assert await player.is_visible("#unmute")
    assert token not in await player.content(), "the player never shows its token"

    # live figures in the studio: both peers and the node
    async def figures() -> dict | None:
        values = {k: (await studio.text_content(f"#{k}") or "").strip() for k in ("pub-fps", "play-fps", "play-decoded", "srv-state", "srv-fps", "srv-viewers")}
        return values if values["srv-state"] == "live" and values["play-fps"] not in ("", "\u2013") and values["srv-viewers"] == "2" else None

    shown = await wait_until(figures, 10, "the studio's live figures")
    assert int(shown["play-decoded"]) > 0, shown
    await studio.wait_for_function("() => /connected/.test(document.getElementById('target-list').textContent)", timeout=15_000)

    source = await asyncio.to_thread(read_frames, camera[0])
    shot = tmp_path / "embed_player.png"
    await player.locator("#video").screenshot(path=str(shot))
    await studio.screenshot(path=str(tmp_path / "studio.png"))  # for a person looking at a failure
    not_checked = await asyncio.to_thread(check_masked, shot, source, camera[1])

    # a new face chosen while live is switched on the running stream (PATCH), which plays on
    await studio.select_option("#face", "pixelate")
    await studio.wait_for_function("() => /Face switched/.test(document.getElementById('notice').textContent)", timeout=15_000)
    assert await studio.is_hidden("#error")

    async def switched() -> bool:
        async with aiohttp.ClientSession() as http:
            resp = await http.get(f"{base(web_node)}/v1/sessions/{session_id}", headers={"Authorization": f"Bearer {API_KEY}"})
            body = await resp.json()
        return body["mode"] == "pixelate" and body["state"] == "live" and (body["live"] or {}).get("face_switches") == 1

    await wait_until(switched, 10, "the stream to take up the new face")
    assert "pixelate" in ((await studio.text_content("#session-mode")) or "")
    await wait_playing(player, "video", 10)
    await asyncio.sleep(0.5)
    await player.locator("#video").screenshot(path=str(tmp_path / "embed_player_pixelated.png"))
    await asyncio.to_thread(check_masked, tmp_path / "embed_player_pixelated.png", source, camera[1], 10.0)

    # the target removed while live: it gets a clean end of stream, the viewers play on
    await studio.click("#target-list button")
    await studio.wait_for_function("() => /Target removed/.test(document.getElementById('notice').textContent)", timeout=10_000)
    assert await asyncio.to_thread(target.wait, 15) == 0
    assert len(analyse_flv(target.path).video_pts_ms) >= 30, "the target got the masked stream while it was on"
    await wait_playing(player, "video", 10)
    assert stream_key not in await studio.content()

    # Stop deletes the WHIP and WHEP resources: the node has no peer of the studio left
    peers_before = len(web_node.webrtc.peers())
    await studio.click("#stop")
    await studio.wait_for_selector("#stop[disabled]", timeout=10_000)
    await wait_until(lambda: len(web_node.webrtc.peers()) == peers_before - 2, 10, "the studio's peers to be deleted")

    # End session: the session is deleted; the player notices (its frames stop, the node no
    # longer holds its WHEP resource) and says so instead of waiting for ever
    await studio.click("#end")
    await studio.wait_for_selector("#session-id:text('none')", timeout=10_000)
    await player.wait_for_selector("#message[data-kind='error']", timeout=20_000)
    assert "ended" in ((await player.text_content("#message-text")) or "")
    studio_log.check(API_KEY, token, stream_key)
    player_log.check(API_KEY, token)
    await embed_context.close()
    await context.close()
    if not_checked:
        pytest.skip(not_checked)


async def test_embed_player_says_when_the_token_is_bad(web_node: Node, browser: Any) -> None:
    context = await browser.new_context(viewport={"width": 640, "height": 360})
    page = await context.new_page()
    log = PageLog(page)
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{base(web_node)}/v1/sessions", json={}, headers={"Authorization": f"Bearer {API_KEY}"})
        session = await resp.json()
    response = await page.goto(f"{base(web_node)}/embed/{session['id']}?token=forged.token.value")
    assert response is not None
    assert response.headers["content-security-policy"].endswith("frame-ancestors *")
    assert response.headers["x-content-type-options"] == "nosniff"
    await page.wait_for_selector("#message[data-kind='error']", timeout=10_000)
    message = (await page.text_content("#message-text")) or ""
    assert "invalid or has expired" in message, message
    assert "forged.token.value" not in await page.content()

    # a good token for a session that is not live yet: the player waits (no error)
    token = await play_token(web_node, session["id"])
    await page.goto(f"{base(web_node)}/embed/{session['id']}?token={token}")
    await page.wait_for_function("() => /go live/.test(document.getElementById('message-text').textContent)", timeout=10_000)
    assert await page.get_attribute("#message", "data-kind") == "info"
    log.check(token)  # the bad token's 401 shows as a failed request in the console; the token never does
    await context.close()


async def test_studio_shows_a_refused_api_key(web_node: Node, browser: Any) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    response = await page.goto(base(web_node) + "/")
    assert response is not None
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    await page.fill("#api-key", "hk_wrong_key_000000000000000000000000")
    await page.click("#connect")
    await page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert "API key was refused" in ((await page.text_content("#error")) or "")
    assert await page.evaluate("() => sessionStorage.getItem('hikariedge.apiKey')") is None
    assert await page.is_disabled("#start")
    await context.close()


PREVIEW_STATE = """() => { const i = document.getElementById('persona-preview');
  return [i.complete && i.naturalWidth > 0, i.src.slice(0, 5), i.naturalWidth, i.naturalHeight,
          document.getElementById('persona-card').hidden]; }"""


async def test_studio_paints_uploads_previews_and_deletes_personas(web_node: Node, browser: Any, tmp_path: Path) -> None:
    from pipeline.procedural import STYLES

    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession() as http:
        # a photo with one face that is nobody's: a built-in persona's painted texture
        resp = await http.get(f"{base(web_node)}/v1/personas/builtin-sculpted/texture.png", headers=auth)
        assert resp.status == 200
        (tmp_path / "face.png").write_bytes(await resp.read())
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "no-face.png"), noise)

    async def listed() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as http:
            resp = await http.get(f"{base(web_node)}/v1/personas", headers=auth)
            return (await resp.json())["personas"]

    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    log = PageLog(page)
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.goto(base(web_node) + "/")
    assert await page.is_disabled("#paint-persona")  # nothing to do before the key is in
    await page.fill("#api-key", API_KEY)
    await page.click("#connect")
    await page.wait_for_selector("#persona-form:not([disabled])", timeout=10_000)
    assert await page.eval_on_selector_all("#persona-style option", "os => os.map(o => o.value)") == list(STYLES)

    # a built-in: previewed, not deletable
    async def preview_of(persona_id: str) -> bool:
        persona = next(p for p in await listed() if p["id"] == persona_id)
        state = await page.evaluate(PREVIEW_STATE)
        return bool(state[0] and state[1] == "blob:" and state[2:4] == [persona["width"], persona["height"]] and not state[4])

    await page.select_option("#face", "persona:builtin-anime")
    await wait_until(lambda: preview_of("builtin-anime"), 10, "the built-in's preview")
    assert await page.is_hidden("#delete-persona")
    assert "built-in" in ((await page.text_content("#persona-caption")) or "")

    # a painted face: made with the chosen style and seed, then chosen and previewed
    await page.fill("#persona-name", "Night shift")
    await page.select_option("#persona-style", "ink")
    await page.fill("#persona-seed", "4242")
    await page.click("#paint-persona")
    await page.wait_for_function("() => /made and chosen/.test(document.getElementById('notice').textContent)", timeout=30_000)
    painted = [p for p in await listed() if p["name"] == "Night shift"]
    assert len(painted) == 1 and painted[0]["style"] == "ink" and painted[0]["seed"] == 4242, painted
    assert await page.input_value("#face") == "persona:" + painted[0]["id"]
    assert await page.input_value("#persona-name") == ""  # ready for the next one
    await wait_until(lambda: preview_of(painted[0]["id"]), 10, "the painted persona's preview")
    assert "seed 4242" in ((await page.text_content("#persona-caption")) or "")

    # a seed that is no number is refused on the page; a photo without a face by the node
    before = len(await listed())
    await page.fill("#persona-seed", "")
    await page.type("#persona-seed", "-3")
    await page.click("#paint-persona")
    await page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert "seed" in ((await page.text_content("#error")) or "")
    await page.set_input_files("#persona-photo", str(tmp_path / "no-face.png"))
    await page.click("#upload-persona")
    await page.wait_for_function("() => /no face/.test(document.getElementById('error').textContent)", timeout=30_000)
    assert "HTTP 422" in ((await page.text_content("#error")) or "")
    assert len(await listed()) == before

    # a photo with one face: uploaded (multipart), chosen, previewed
    await page.fill("#persona-name", "Uploaded")
    await page.set_input_files("#persona-photo", str(tmp_path / "face.png"))
    await page.click("#upload-persona")
    await page.wait_for_function("() => /Uploaded.*made and chosen/.test(document.getElementById('notice').textContent)", timeout=30_000)
    assert await page.is_hidden("#error")
    uploaded = [p for p in await listed() if p["name"] == "Uploaded"]
    assert len(uploaded) == 1 and uploaded[0]["kind"] == "image", uploaded
    assert await page.input_value("#face") == "persona:" + uploaded[0]["id"]
    await wait_until(lambda: preview_of(uploaded[0]["id"]), 10, "the uploaded persona's preview")

    # deleted (after the confirmation): gone from the node and from the choice
    await page.click("#delete-persona")
    await page.wait_for_function("() => /Persona deleted/.test(document.getElementById('notice').textContent)", timeout=10_000)
    assert [p["id"] for p in await listed()].count(uploaded[0]["id"]) == 0
    options = await page.eval_on_selector_all("#face option", "os => os.map(o => o.value)")
    assert "persona:" + uploaded[0]["id"] not in options and "persona:" + painted[0]["id"] in options
    assert await page.is_hidden("#persona-card")  # back on anonymize: nothing to preview
    log.check(API_KEY)
    await context.close()
