"""WHEP fan-out benchmark: what each extra viewer costs the node, with encode-once.

One 720p30 RTMP publisher (ffmpeg, looping a clip) into `hikariedge serve` (identity
processor, so that the figure is the media plane's), then 0, 1, N WHEP viewers. The viewers
run in this process with aiortc's decoder stubbed out (they count the frames aiortc would
decode), so the machine's CPU goes to the node, not to the viewers. For each step: the
node's process CPU per second and its output frame rate.

    .venv/bin/python bench/whep_fanout_bench.py --viewers 1,4,8 --seconds 10 --out bench/out/whep_fanout.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiortc.rtcrtpreceiver  # noqa: E402

from tests.edge_server.webrtc.client import whep_play  # noqa: E402
from tests.helpers import ffmpeg_exe, free_port, make_sync_clip  # noqa: E402

API_KEY = "hk_bench_key_0123456789abcdefghijklmnop"
FRAMES_SEEN = {"count": 0}


def counting_decoder_worker(loop, input_q, output_q, decode_error) -> None:  # noqa: ANN001
    """Stands in for aiortc's decoder thread: counts whole video frames, decodes nothing."""
    while (task := input_q.get()) is not None:
        if task[0].mimeType.lower().startswith("video/"):
            FRAMES_SEEN["count"] += 1


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def api(url: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def frames_out(http: str) -> float:
    with urllib.request.urlopen(f"{http}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("hikariedge_frames_out_all_total"):
                return float(line.split()[-1])
    return 0.0


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--viewers", default="1,4,8")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out")
    args = parser.parse_args()
    aiortc.rtcrtpreceiver.decoder_worker = counting_decoder_worker
    steps = [0] + [int(v) for v in args.viewers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_sync_clip(Path(tmp) / "clip.flv", seconds=10)
        http_port, rtmp_port = free_port(), free_port()
        env = {**os.environ, "HIKARIEDGE__AUTH__API_KEYS": API_KEY, "HIKARIEDGE__PIPELINE__PROCESSOR": "identity",
               "HIKARIEDGE__WEBRTC__ALLOW_LOOPBACK": "true", "HIKARIEDGE__WEBRTC__MAX_VIEWERS_PER_SESSION": "1000",
               "HIKARIEDGE__HTTP__HOST": "127.0.0.1", "HIKARIEDGE__RTMP__HOST": "127.0.0.1", "HIKARIEDGE__LOG_LEVEL": "WARNING"}
        node = subprocess.Popen([sys.executable, "-m", "edge_server.cli", "serve", "--http-port", str(http_port), "--rtmp-port",
                                 str(rtmp_port), "--data-dir", str(Path(tmp) / "data")], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert node.stdout is not None
        for line in node.stdout:
            if "then paste" in line:
                break
        http = f"http://127.0.0.1:{http_port}"
        session = api(f"{http}/v1/sessions")
        token = api(f"{http}/v1/sessions/{session['id']}/play-tokens", {"ttl_s": 3600})["token"]
        publisher = subprocess.Popen(
            [ffmpeg_exe(), "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy", "-f", "flv",
             f"{session['rtmp']['server_url']}/{session['rtmp']['stream_key']}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        viewers = []
        results = []
        try:
            await asyncio.sleep(3.0)  # publish settles
            for count in steps:
                while len(viewers) < count:
                    viewers.append(await whep_play(session["whep"]["url"], token, audio=True))
                await asyncio.sleep(2.0)
                cpu0, out0, seen0, t0 = cpu_seconds(node.pid), frames_out(http), FRAMES_SEEN["count"], time.monotonic()
                await asyncio.sleep(args.seconds)
                elapsed = time.monotonic() - t0
                step = {
                    "viewers": count,
                    "node_cpu_per_s": round((cpu_seconds(node.pid) - cpu0) / elapsed, 3),
                    "fps_out": round((frames_out(http) - out0) / elapsed, 1),
                    "video_frames_per_viewer_per_s": round((FRAMES_SEEN["count"] - seen0) / elapsed / count, 1) if count else None,
                }
                results.append(step)
                print(step, flush=True)
        finally:
            for viewer in viewers:
                await viewer.close()
            publisher.terminate()
            node.terminate()
            node.wait(10)
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "stream": "1280x720 30 fps, identity",
              "steps": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
