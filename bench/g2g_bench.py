"""Glass-to-glass benchmark: per-frame latency from a publisher to WHEP viewers and an RTMP
target, frame rate per viewer with 1, 3 and 10 viewers, and the node's CPU at each step.

Every published frame carries its number in its pixels: grey/light-grey blocks (12 bits and
their complement, 26 px wide, twice: left and right half) in the bottom 16 rows of the
1280x720 picture, away from the face (the masker leaves pixels outside faces as they came
in; where the privacy guard covers part of the band, the other copy still reads). The
publisher notes when it captured each number; receivers decode frames and read it back.

- node: `hikariedge serve` in its own process (so its process CPU time is its own), with the
  default masking processor; a second node with the identity processor is the baseline.
- publishers: WHIP (aiortc, this process; frames encoded by libx264 ultrafast/zerolatency
  and sent as packets, as OBS would) and RTMP (the ffmpeg CLI fed raw frames on stdin,
  libx264 ultrafast/zerolatency). Source: lp_s18.mp4 from ../shared/eval (a real face, so
  the masker does real work), else a synthetic clip.
- receivers: one WHEP viewer in this process decodes every frame (aiortc) and reads the
  number: "decoded" is when aiortc hands over the decoded frame, "on the wire" when the
  frame's last RTP packet (marker bit) arrived (aiortc's jitter buffer only releases a frame
  when the next one starts, which adds up to a frame interval to "decoded"). The session's
  RTMP target is our RtmpServer in this process: latency is when the frame's message has
  arrived (read back by decoding it in a thread). The extra viewers for the 3 and 10 steps run
  in a separate process and count the frames aiortc would decode without decoding them, so
  neither this machine's client-side decoding nor its CPU shows up as the node's.

    .venv/bin/python bench/g2g_bench.py --seconds 10 --out bench/out/g2g.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av  # noqa: E402
import numpy as np  # noqa: E402
from aiortc.mediastreams import MediaStreamTrack  # noqa: E402

from edge_server.media.codecs import EncoderSettings, H264Encoder  # noqa: E402

WIDTH, HEIGHT, FPS = 1280, 720, 30
BITS = 12  # frame numbers modulo 4096 (over two minutes at 30 fps: more than a phase lasts)
MASK = (1 << BITS) - 1
COPIES = 2  # the number twice, in the left and the right half: a cover over one half spares the other
BLOCK_W = WIDTH // (COPIES * 2 * BITS)  # 26 px: 12 bits then their complement, per copy
COPY_W = WIDTH // COPIES
BAND_H = 16  # bottom rows 704..719: one macroblock row
LOW, HIGH = 80, 176  # grey levels of a 0 and a 1: mid contrast (black/white bands made the segmenter see people)
BAND_Y = HEIGHT - BAND_H
API_KEY = "hk_bench_key_0123456789abcdefghijklmnop"
SOURCE_SECONDS = 5.0


# -- the frame number in the pixels ------------------------------------------------------------


def stamp(yuv: np.ndarray, number: int) -> np.ndarray:
    """A copy of a yuv420p frame (as PyAV's (H*3/2, W) array) with `number` in the bottom band."""
    out = yuv.copy()
    value = number & MASK
    bits = [(value >> (BITS - 1 - i)) & 1 for i in range(BITS)]
    bits += [1 - b for b in bits]
    copy = np.repeat(np.where(np.array(bits, bool), HIGH, LOW).astype(np.uint8), BLOCK_W)
    row = np.full(WIDTH, LOW, np.uint8)
    for c in range(COPIES):
        row[c * COPY_W:c * COPY_W + copy.size] = copy
    out[BAND_Y:HEIGHT, :] = row
    # chroma of the band: neutral (U and V planes sit below Y, each (H/4) rows of W bytes)
    c0 = HEIGHT + BAND_Y // 4
    out[c0:HEIGHT + HEIGHT // 4, :] = 128
    out[HEIGHT + HEIGHT // 4 + BAND_Y // 4:, :] = 128
    return out


def read_stamp(luma: np.ndarray) -> int | None:
    """The number in a decoded frame's luma plane (H x W), or None if no copy checks out
    (a covered frame, a corrupt one, a frame of another size)."""
    h, w = luma.shape[:2]
    if (w, h) != (WIDTH, HEIGHT):
        return None
    band = luma[BAND_Y + 4:HEIGHT - 4].astype(np.float32)
    for c in range(COPIES):
        x = c * COPY_W + np.arange(2 * BITS) * BLOCK_W
        levels = np.array([band[:, s + 7:s + BLOCK_W - 7].mean() for s in x])
        bits = levels > (LOW + HIGH) / 2
        value, check = bits[:BITS], bits[BITS:]
        if np.all(value != check) and np.min(np.abs(levels - (LOW + HIGH) / 2)) >= (HIGH - LOW) / 4:
            return int(sum(int(b) << (BITS - 1 - i) for i, b in enumerate(value)))
    return None


def luma_of(frame: av.VideoFrame) -> np.ndarray:
    plane = frame.planes[0]
    buf = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return buf[:, : plane.width]


def load_source(tmp: Path) -> tuple[list[np.ndarray], str]:
    """SOURCE_SECONDS of 1280x720 yuv420p frames: lp_s18.mp4 if the eval media is there."""
    from tests.helpers import have_shared_eval, make_sync_clip

    eval_dir = have_shared_eval()
    if eval_dir is not None:
        path, name = eval_dir / "videos" / "lp_s18.mp4", "lp_s18.mp4 (a real face, ../shared/eval)"
    else:
        path, name = make_sync_clip(tmp / "synthetic.flv", seconds=SOURCE_SECONDS), "synthetic testsrc2 (no ../shared/eval)"
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.reformat(width=WIDTH, height=HEIGHT, format="yuv420p").to_ndarray())
            if len(frames) >= SOURCE_SECONDS * FPS:
                break
    return frames, name


# -- measurements ------------------------------------------------------------------------------


@dataclass
class Probe:
    """Every frame that reached one receiver: when, its number (None where it did not read
    back, e.g. a frame the privacy guard covered), and when its last RTP packet arrived."""

    name: str
    arrivals: list[tuple[float, int | None, float | None]] = field(default_factory=list)

    def add(self, t: float, number: int | None, wire: float | None = None) -> None:
        self.arrivals.append((t, number, wire))

    @property
    def unreadable(self) -> int:
        return sum(1 for _, n, _ in self.arrivals if n is None)

    def window(self, t0: float, t1: float) -> list[tuple[float, int | None, float | None]]:
        return [a for a in self.arrivals if t0 <= a[0] < t1]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def missing_share(numbers: list[int]) -> float | None:
    """Share of frame numbers skipped between the first and the last one read (numbers wrap at MASK)."""
    if len(numbers) < 2:
        return None
    unwrapped, last = [numbers[0]], numbers[0]
    for n in numbers[1:]:
        step = (n - last) & MASK
        if step > MASK // 2:
            step -= MASK + 1  # an older frame (a repeat)
        last = n
        unwrapped.append(unwrapped[-1] + step)
    span = max(unwrapped) - min(unwrapped) + 1
    return round(1 - len(set(unwrapped)) / span, 3)


def latency_summary(probe: Probe, sent: dict[int, float], t0: float, t1: float) -> dict[str, Any]:
    got = probe.window(t0, t1)
    read = [(t, n, w) for t, n, w in got if n is not None and n in sent]
    decoded = [(t - sent[n]) * 1000 for t, n, _ in read]
    wire = [(w - sent[n]) * 1000 for _, n, w in read if w is not None]
    out: dict[str, Any] = {
        "frames": len(got),
        "fps": round(len(got) / (t1 - t0), 1),
        "unreadable": len(got) - len(read),
        "missing_share": missing_share([n for _, n, _ in read]),
        "p50_ms": _r(percentile(decoded, 50)),
        "p95_ms": _r(percentile(decoded, 95)),
        "max_ms": _r(max(decoded) if decoded else None),
    }
    if wire:
        out["wire_p50_ms"], out["wire_p95_ms"] = _r(percentile(wire, 50)), _r(percentile(wire, 95))
    return out


def _r(v: float | None) -> float | None:
    return round(v, 1) if v is not None else None


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM it when this process dies (a crashed run leaves no node behind)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the node ----------------------------------------------------------------------------------


class NodeProcess:
    def __init__(self, tmp: Path, processor: str) -> None:
        from tests.helpers import free_port

        self.http_port, self.rtmp_port = free_port(), free_port()
        self.http = f"http://127.0.0.1:{self.http_port}"
        env = {**os.environ, "HIKARIEDGE__AUTH__API_KEYS": API_KEY, "HIKARIEDGE__PIPELINE__PROCESSOR": processor,
               "HIKARIEDGE__WEBRTC__ALLOW_LOOPBACK": "true", "HIKARIEDGE__WEBRTC__HOST_ADDRESSES": "127.0.0.1",
               "HIKARIEDGE__WEBRTC__MAX_VIEWERS_PER_SESSION": "1000", "HIKARIEDGE__HTTP__HOST": "127.0.0.1",
               "HIKARIEDGE__RTMP__HOST": "127.0.0.1", "HIKARIEDGE__LOG_LEVEL": "WARNING"}
        self.log = open(tmp / f"node-{processor}.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge_server.cli", "serve", "--http-port", str(self.http_port), "--rtmp-port",
             str(self.rtmp_port), "--data-dir", str(tmp / f"data-{processor}")],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1], preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.http}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not start; see {self.log.name}")
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        return self.process.pid

    def api(self, path: str, body: dict | None = None, method: str = "POST") -> dict:
        request = urllib.request.Request(f"{self.http}{path}", data=json.dumps(body or {}).encode() if method == "POST" else None,
                                         method=method, headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    def counters(self) -> dict[str, float]:
        """Frames out, dropped (by reason) and covered (by reason), all sessions, from /metrics."""
        out: dict[str, float] = {}
        with urllib.request.urlopen(f"{self.http}/metrics", timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                for prefix, name in (("hikariedge_frames_out_all_total", "out"), ("hikariedge_frames_dropped_all_total", "dropped"),
                                     ("hikariedge_covered_all_total", "covered")):
                    if line.startswith(prefix):
                        reason = line.split('reason="', 1)[1].split('"', 1)[0] if 'reason="' in line else ""
                        key = f"{name}:{reason}" if reason else name
                        out[key] = out.get(key, 0.0) + float(line.split()[-1])
        return out

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {k: int(after[k] - before.get(k, 0.0)) for k in sorted(after) if k != "out" and after[k] - before.get(k, 0.0) > 0}


# -- publishers --------------------------------------------------------------------------------


class StampedPacketTrack(MediaStreamTrack):
    """A WHIP video track: numbered frames at 30 fps, encoded here (libx264 ultrafast,
    zerolatency, as OBS does it) and handed to aiortc as packets."""

    kind = "video"

    def __init__(self, source: list[np.ndarray], sent: dict[int, float]) -> None:
        super().__init__()
        self.source, self.sent = source, sent
        self.encoder = H264Encoder(EncoderSettings(WIDTH, HEIGHT, FPS, 4000, 1.0, "ultrafast", 1))
        self.number = 0
        self.t0: float | None = None

    async def recv(self) -> av.Packet:
        while True:
            if self.t0 is None:
                self.t0 = time.monotonic()
            delay = self.t0 + self.number / FPS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            n = self.number
            self.number += 1
            captured = time.monotonic()
            frame = av.VideoFrame.from_ndarray(stamp(self.source[n % len(self.source)], n), format="yuv420p")
            frame.pts = round(n * 1000 / FPS)
            self.sent[n & MASK] = captured
            encoded = await asyncio.to_thread(self.encoder.encode, frame)
            if encoded:
                packet = av.Packet(encoded[0].data)
                packet.pts, packet.dts, packet.time_base = encoded[0].pts, encoded[0].dts, Fraction(1, 1000)
                return packet


async def whip_publish(url: str, token: str, source: list[np.ndarray], sent: dict[int, float]) -> Any:
    from edge_server.webrtc.tracks import route_keyframe_requests
    from tests.edge_server.webrtc.client import whip_publish as client_whip_publish

    track = StampedPacketTrack(source, sent)
    exchange = await client_whip_publish(url, token, track)
    if exchange.status != 201:
        raise RuntimeError(f"WHIP publish refused: {exchange.status} {exchange.body[:200]}")
    for sender in exchange.pc.getSenders():
        if sender.track is track:
            route_keyframe_requests(sender, track.encoder.request_keyframe)
    return exchange


class RtmpPublisher:
    """The ffmpeg CLI publishing numbered raw frames from its stdin (libx264 ultrafast, zerolatency)."""

    def __init__(self, url: str, source: list[np.ndarray], sent: dict[int, float], first: int = 0) -> None:
        from tests.helpers import ffmpeg_exe

        self.process = subprocess.Popen(
            [ffmpeg_exe(), "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS),
             "-i", "-", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(FPS), "-b:v", "4000k",
             "-maxrate", "4000k", "-bufsize", "4000k", "-pix_fmt", "yuv420p", "-flush_packets", "1", "-tcp_nodelay", "1",
             "-f", "flv", url],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.source, self.sent, self.first = source, sent, first
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rtmp-publisher", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        assert self.process.stdin is not None
        t0 = time.monotonic()
        n = 0
        while not self.stopping.is_set():
            delay = t0 + n / FPS - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            number = self.first + n
            data = stamp(self.source[n % len(self.source)], number).tobytes()
            self.sent[number & MASK] = time.monotonic()
            try:
                self.process.stdin.write(data)
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError):
                return
            n += 1

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        try:
            assert self.process.stdin is not None
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()


# -- receivers ---------------------------------------------------------------------------------


class RtmpTarget:
    """The session's RTMP target: our RtmpServer; frames are timed on arrival and read back
    by a decoder thread (so decoding does not hold up the event loop)."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._decode, name="rtmp-target-decoder", daemon=True)
        self.thread.start()

    async def on_publish(self, request: Any, publisher: Any) -> "RtmpTarget":
        return self

    def on_metadata(self, metadata: dict) -> None:
        pass

    def on_audio(self, timestamp: int, payload: bytes) -> None:
        pass

    def on_video(self, timestamp: int, payload: bytes) -> None:
        self.queue.put((time.monotonic(), timestamp, payload))

    def on_close(self) -> None:
        pass

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(5)

    def _decode(self) -> None:
        from edge_server.media.codecs import DecodeError, H264Decoder

        decoder = None
        while (item := self.queue.get()) is not None:
            arrived, timestamp, payload = item
            if len(payload) < 5 or payload[0] & 0x0F != 7:
                continue
            if payload[1] == 0:
                decoder = H264Decoder(payload[5:])
                continue
            if decoder is None:
                continue
            cts = int.from_bytes(payload[2:5], "big", signed=True)
            try:
                frames = decoder.decode(payload[5:], timestamp + cts, timestamp)
            except DecodeError:
                continue
            for frame in frames:
                self.probe.add(arrived, read_stamp(luma_of(frame)))


MARKERS: dict[Any, dict[int, float]] = {}  # aiortc receiver -> RTP timestamp -> arrival of its last packet


def watch_markers() -> None:
    """Note when the last packet (marker bit) of each frame reaches a watched receiver, and
    remember how aiortc re-bases RTP timestamps into the decoded frames' pts."""
    from aiortc.rtcrtpreceiver import RTCRtpReceiver, TimestampMapper

    original = RTCRtpReceiver._handle_rtp_packet

    async def handle(self: Any, packet: Any, arrival_time_ms: int) -> None:
        marks = MARKERS.get(self)
        if marks is not None and packet.marker:
            marks.setdefault(packet.timestamp, time.monotonic())
        await original(self, packet, arrival_time_ms)

    original_map = TimestampMapper.map

    def map_timestamp(self: Any, timestamp: int) -> int:
        mapped = original_map(self, timestamp)
        table = getattr(self, "bench_table", None)
        if table is not None:
            table[mapped] = timestamp
        return mapped

    RTCRtpReceiver._handle_rtp_packet = handle  # type: ignore[method-assign]
    TimestampMapper.map = map_timestamp  # type: ignore[method-assign]


async def decoding_viewer(url: str, token: str, probe: Probe) -> Any:
    """A WHEP viewer that decodes every frame (aiortc) and reads its number."""
    from aiortc import RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    from tests.edge_server.webrtc.client import client_pc, local_offer, post_offer

    pc = client_pc()
    transceiver = pc.addTransceiver("video", direction="recvonly")
    marks: dict[int, float] = {}
    MARKERS[transceiver.receiver] = marks
    rtp_of_pts: dict[int, int] = {}
    transceiver.receiver._RTCRtpReceiver__timestamp_mapper.bench_table = rtp_of_pts  # type: ignore[attr-defined]
    tasks: list[asyncio.Task] = []

    async def consume(track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            number = read_stamp(luma_of(frame))
            rtp = rtp_of_pts.pop(frame.pts, None)
            probe.add(now, number, marks.pop(rtp, None) if rtp is not None else None)
            if number is None and os.environ.get("G2G_DUMP") and probe.unreadable % 10 == 5:  # to look at what did not read back
                import cv2

                cv2.imwrite(f"{os.environ['G2G_DUMP']}/{probe.name.replace('>', '')}_{probe.unreadable}.png", frame.to_ndarray(format="bgr24"))
            for table in (marks, rtp_of_pts):
                if len(table) > 300:
                    for key in list(table)[:200]:
                        table.pop(key, None)

    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
    status, headers, body = await post_offer(url, token, await local_offer(pc))
    if status != 201:
        raise RuntimeError(f"WHEP play refused: {status} {body[:200]}")
    await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    pc.bench_tasks = tasks  # type: ignore[attr-defined]
    return pc


class ViewerFarm:
    """Extra WHEP viewers in a child process (this script with --farm): they count the frames
    aiortc would decode, without decoding them."""

    def __init__(self, url: str, token: str) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--farm", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, cwd=Path(__file__).resolve().parents[1])
        self._send(token)  # the play token over stdin, not on a command line

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    async def _reply(self) -> Any:
        assert self.process.stdout is not None
        line = await asyncio.to_thread(self.process.stdout.readline)
        if not line:
            raise RuntimeError("the viewer farm died")
        return json.loads(line)

    async def add(self, count: int) -> Any:
        self._send(f"add {count}")
        return await self._reply()

    async def counts(self) -> list[int]:
        self._send("counts")
        return (await self._reply())["counts"]

    def stop(self) -> None:
        try:
            self._send("quit")
            self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()


async def farm_main(url: str) -> None:
    import aiortc.rtcrtpreceiver

    from tests.edge_server.webrtc.client import whep_play

    counts: dict[int, int] = {}
    lock = threading.Lock()

    def counting_worker(loop: Any, input_q: queue.Queue, output_q: Any, *rest: Any) -> None:
        key = id(input_q)
        while (task := input_q.get()) is not None:
            if task[0].mimeType.lower().startswith("video/"):
                with lock:
                    counts[key] = counts.get(key, 0) + 1

    aiortc.rtcrtpreceiver.decoder_worker = counting_worker
    token = (await asyncio.to_thread(sys.stdin.readline)).strip()
    viewers = []
    while True:
        line = (await asyncio.to_thread(sys.stdin.readline)).strip()
        if not line or line == "quit":
            break
        if line.startswith("add "):
            for _ in range(int(line.split()[1])):
                viewer = await whep_play(url, token, audio=True)
                if viewer.exchange.status != 201:
                    print(json.dumps({"error": viewer.exchange.status}), flush=True)
                    return
                viewers.append(viewer)
            deadline = time.monotonic() + 10
            while len(counts) < len(viewers) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            print(json.dumps({"viewers": len(viewers), "receiving": len(counts)}), flush=True)
        elif line == "counts":
            with lock:
                print(json.dumps({"counts": list(counts.values())}), flush=True)
    for viewer in viewers:
        await viewer.close()


# -- the run -----------------------------------------------------------------------------------


async def whip_phase(node: NodeProcess, source: list[np.ndarray], steps: list[int], seconds: float) -> dict:
    from edge_server.rtmp.server import RtmpServer
    from tests.helpers import free_port

    rtmp_probe, whep_probe = Probe("WHIP->RTMP"), Probe("WHIP->WHEP")
    target = RtmpTarget(rtmp_probe)
    target_port = free_port()
    target_server = RtmpServer(target, "127.0.0.1", target_port)
    await target_server.start()
    session = node.api("/v1/sessions", {"targets": [f"rtmp://127.0.0.1:{target_port}/app/g2g"]})
    token = node.api(f"/v1/sessions/{session['id']}/play-tokens", {"ttl_s": 3600})["token"]
    sent: dict[int, float] = {}
    viewer = await decoding_viewer(session["whep"]["url"], token, whep_probe)
    publisher = await whip_publish(session["whip"]["url"], session["whip"]["bearer_token"], source, sent)
    farm = ViewerFarm(session["whep"]["url"], token) if max(steps) > 1 else None
    results = []
    try:
        await asyncio.sleep(4.0)  # the pipeline's first detections, the encoder's first keyframe, the target connects
        extra = 0
        for count in steps:
            if farm is not None and count - 1 > extra:
                reply = await farm.add(count - 1 - extra)
                extra = count - 1
                if reply.get("receiving", 0) < extra:
                    print(f"  warning: only {reply.get('receiving')} of {extra} farm viewers receive", flush=True)
            await asyncio.sleep(2.0)
            counts0 = await farm.counts() if farm is not None and extra else []
            c0 = await asyncio.to_thread(node.counters)  # off the loop: the receivers keep timing frames
            cpu0, t0 = cpu_seconds(node.pid), time.monotonic()
            client0 = time.process_time() + (cpu_seconds(farm.process.pid) if farm is not None else 0.0)
            await asyncio.sleep(seconds)
            t1 = time.monotonic()
            cpu1 = cpu_seconds(node.pid)
            client1 = time.process_time() + (cpu_seconds(farm.process.pid) if farm is not None else 0.0)
            c1 = await asyncio.to_thread(node.counters)
            out0, out1 = c0.get("out", 0.0), c1.get("out", 0.0)
            counts1 = await farm.counts() if farm is not None and extra else []
            span = t1 - t0
            farm_fps = [round((b - a) / span, 1) for a, b in zip(counts0, counts1)]
            decoding = latency_summary(whep_probe, sent, t0, t1)
            per_viewer = [decoding["fps"], *farm_fps]
            step = {
                "viewers": count,
                "node_cpu_per_s": round((cpu1 - cpu0) / span, 3),
                "node_fps_out": round((out1 - out0) / span, 1),
                "node_dropped_covered": counter_delta(c0, c1),
                "fps_per_viewer_min": min(per_viewer),
                "fps_per_viewer_median": statistics.median(per_viewer),
                "farm_viewer_fps": farm_fps,
                "client_cpu_per_s": round((client1 - client0) / span, 3),  # publisher, decoding viewer, RTMP target, farm
                "whip_to_whep": decoding,
                "whip_to_rtmp": latency_summary(rtmp_probe, sent, t0, t1),
            }
            results.append(step)
            print(f"  {count:2d} viewer(s): node CPU {step['node_cpu_per_s']:.2f} s/s, out {step['node_fps_out']} fps, "
                  f"viewer fps min {step['fps_per_viewer_min']}, WHIP->WHEP p50/p95 {decoding['p50_ms']}/{decoding['p95_ms']} ms "
                  f"(wire {decoding.get('wire_p50_ms')}/{decoding.get('wire_p95_ms')}), WHIP->RTMP p50/p95 "
                  f"{step['whip_to_rtmp']['p50_ms']}/{step['whip_to_rtmp']['p95_ms']} ms, dropped/covered {step['node_dropped_covered']}", flush=True)
    finally:
        if farm is not None:
            farm.stop()
        await viewer.close()
        await publisher.pc.close()
        await target_server.stop()
        target.stop()
    return {"steps": results, "unreadable_frames": {"whep": whep_probe.unreadable, "rtmp": rtmp_probe.unreadable}}


async def rtmp_phase(node: NodeProcess, source: list[np.ndarray], seconds: float) -> dict:
    probe = Probe("RTMP->WHEP")
    session = node.api("/v1/sessions", {})
    token = node.api(f"/v1/sessions/{session['id']}/play-tokens", {"ttl_s": 3600})["token"]
    sent: dict[int, float] = {}
    viewer = await decoding_viewer(session["whep"]["url"], token, probe)
    publisher = RtmpPublisher(f"{session['rtmp']['server_url']}/{session['rtmp']['stream_key']}", source, sent, first=2000)
    try:
        await asyncio.sleep(4.0)
        c0 = await asyncio.to_thread(node.counters)
        cpu0, t0 = cpu_seconds(node.pid), time.monotonic()
        await asyncio.sleep(seconds)
        t1, cpu1 = time.monotonic(), cpu_seconds(node.pid)
        c1 = await asyncio.to_thread(node.counters)
        result = {"rtmp_to_whep": latency_summary(probe, sent, t0, t1), "node_cpu_per_s": round((cpu1 - cpu0) / (t1 - t0), 3),
                  "node_fps_out": round((c1.get("out", 0.0) - c0.get("out", 0.0)) / (t1 - t0), 1),
                  "node_dropped_covered": counter_delta(c0, c1), "unreadable_frames": probe.unreadable}
    finally:
        publisher.stop()
        await viewer.close()
    r = result["rtmp_to_whep"]
    print(f"  RTMP->WHEP p50/p95 {r['p50_ms']}/{r['p95_ms']} ms (wire {r.get('wire_p50_ms')}/{r.get('wire_p95_ms')}), viewer {r['fps']} fps, "
          f"node out {result['node_fps_out']} fps, dropped/covered {result['node_dropped_covered']}", flush=True)
    return result


async def run(args: argparse.Namespace) -> dict:
    watch_markers()
    steps = [int(v) for v in args.viewers.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        source, source_name = load_source(tmp)
        print(f"source: {source_name}, {len(source)} frames at {WIDTH}x{HEIGHT}, looped", flush=True)
        report: dict[str, Any] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, PyAV {av.__version__}",
            "stream": f"{WIDTH}x{HEIGHT} {FPS} fps, {source_name}",
            "seconds_per_step": args.seconds,
        }
        print("node with the mask processor (the default):", flush=True)
        node = NodeProcess(tmp, "mask")
        try:
            report["mask"] = {"whip": await whip_phase(node, source, steps, args.seconds), "rtmp": await rtmp_phase(node, source, args.seconds)}
        finally:
            node.stop()
        if not args.no_baseline:
            print("baseline: node with the identity processor (no masking), 1 viewer:", flush=True)
            node = NodeProcess(tmp, "identity")
            try:
                report["identity"] = {"whip": await whip_phase(node, source, [1], args.seconds)}
            finally:
                node.stop()
    report["summary"] = summarise(report)
    return report


def summarise(report: dict) -> dict:
    steps = report["mask"]["whip"]["steps"]
    first, last = steps[0], steps[-1]
    summary: dict[str, Any] = {
        "whip_to_whep_p50_ms": first["whip_to_whep"]["p50_ms"],
        "whip_to_whep_p95_ms": first["whip_to_whep"]["p95_ms"],
        "whip_to_whep_wire_p95_ms": first["whip_to_whep"].get("wire_p95_ms"),
        "whip_to_rtmp_p95_ms": first["whip_to_rtmp"]["p95_ms"],
        "rtmp_to_whep_p95_ms": report["mask"]["rtmp"]["rtmp_to_whep"]["p95_ms"],
        "rtmp_to_whep_wire_p95_ms": report["mask"]["rtmp"]["rtmp_to_whep"].get("wire_p95_ms"),
        f"fps_per_viewer_min_at_{last['viewers']}_viewers": last["fps_per_viewer_min"],
        f"node_cpu_ratio_{last['viewers']}_to_{first['viewers']}_viewers": round(last["node_cpu_per_s"] / first["node_cpu_per_s"], 2) if first["node_cpu_per_s"] else None,
        "targets (not asserted)": "WHIP->WHEP p95 < 200 ms; 30 fps held for 10 viewers; node CPU flat in viewers",
    }
    if "identity" in report:
        base = report["identity"]["whip"]["steps"][0]
        summary["identity_whip_to_whep_p95_ms"] = base["whip_to_whep"]["p95_ms"]
        summary["masking_adds_p50_ms"] = _r(first["whip_to_whep"]["p50_ms"] - base["whip_to_whep"]["p50_ms"]) if base["whip_to_whep"]["p50_ms"] and first["whip_to_whep"]["p50_ms"] else None
        summary["node_cpu_ratio_mask_to_identity_1_viewer"] = round(first["node_cpu_per_s"] / base["node_cpu_per_s"], 2) if base["node_cpu_per_s"] else None
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window per step")
    parser.add_argument("--viewers", default="1,3,10", help="viewer counts, rising")
    parser.add_argument("--no-baseline", action="store_true", help="skip the identity-processor baseline")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "g2g.json"))
    parser.add_argument("--farm", metavar="WHEP_URL", help=argparse.SUPPRESS)  # internal: the extra viewers' process
    args = parser.parse_args()
    if args.farm:
        asyncio.run(farm_main(args.farm))
        return
    report = asyncio.run(run(args))
    print(json.dumps(report["summary"], indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
