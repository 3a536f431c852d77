"""End to end with a real face: ffmpeg publishes real footage over RTMP, the node masks it,
an ffmpeg RTMP receiver records the result, and the eval recognizer checks every frame.

Needs ../shared/eval (real faces and the MobileFaceNet recognizer); skips without it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np
import pytest

from bench.eval_lib import IndependentYuNet, Recognizer, align_face, alignment_matrix, cosine
from edge_server.node import Node
from tests.edge_server.test_relay_e2e import create_session, publish_url, wait_state
from tests.helpers import have_shared_eval, publish, start_receiver

pytestmark = pytest.mark.e2e
LEAK_COSINE = 0.35  # shared/eval/README: same person 0.57-0.74, different people ~0.0


def _frames_by_ms(path: Path, limit_ms: float) -> dict[int, np.ndarray]:
    out = {}
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            if f.time is None or f.time * 1000 > limit_ms:
                break
            out[round(f.time * 1000)] = f.to_ndarray(format="rgb24")
    return out


@pytest.mark.parametrize("mode", ["anonymize", "persona"])
async def test_real_face_never_reaches_the_rtmp_target(node: Node, tmp_path: Path, mode: str) -> None:
    eval_dir = have_shared_eval()
    if eval_dir is None:
        pytest.skip("../shared/eval is absent: this test needs real faces and the recognizer")
    clip = eval_dir / "videos" / "lp_s18.mp4"
    receiver = start_receiver(tmp_path / "masked.flv")
    fields = {"mode": mode, **({"persona": "builtin-soft"} if mode == "persona" else {})}
    session = await create_session(node, [receiver.url], **fields)
    publisher = publish(clip, publish_url(session), extra=["-t", "4"])
    await wait_state(node, session["id"], "live")
    assert await asyncio.to_thread(publisher.wait, 60) == 0
    assert await asyncio.to_thread(receiver.wait, 20) == 0

    received = _frames_by_ms(receiver.path, 4000)
    sent = _frames_by_ms(clip, 4000)
    assert len(received) >= 0.7 * len(sent), (len(received), len(sent))
    detector, recognizer = IndependentYuNet(eval_dir), Recognizer(eval_dir)
    checked, worst = 0, -1.0
    for ms, out_rgb in sorted(received.items()):
        near = [t for t in (ms, ms - 1, ms + 1) if t in sent]  # FLV keeps whole milliseconds
        assert near, f"output frame at {ms} ms has no input frame: timestamps must follow the input"
        in_rgb = sent[near[0]]
        faces = detector.detect(in_rgb)
        if not faces:
            continue
        m = alignment_matrix(faces[0].kps)
        a, b = recognizer.embed(np.stack([align_face(in_rgb, matrix=m), align_face(out_rgb, matrix=m)]))
        c = cosine(a, b)
        worst = max(worst, c)
        assert c < LEAK_COSINE, f"{mode}: frame at {ms} ms shows the publisher's identity (cosine {c:.2f})"
        checked += 1
    assert checked >= 0.7 * len(received), "the input should show a face in nearly every frame"
    print(f"{mode}: {checked} frames checked, worst cosine {worst:.3f}")
