"""Relay benchmark: one 720p30 publisher for N seconds through `hikariedge serve`, and in the
same run through a plain ffmpeg re-stream (the baseline). Prints figures and writes JSON.

Latency is measured the same way for both: a TCP tap between the publisher and the system
under test notes when each video message passes (parsed with our RTMP chunk reader), and an
RTMP receiver (our RtmpServer) notes when the frame with the same timestamp arrives.
CPU is the system under test's process CPU time per second of stream.

    .venv/bin/python bench/relay_bench.py --seconds 30 --out bench/out/relay.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from urllib.parse import urlsplit, urlunsplit
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_server.rtmp.chunk import ChunkError, ChunkReader  # noqa: E402
from edge_server.rtmp.messages import MessageType  # noqa: E402
from edge_server.rtmp.server import PublishRequest, RtmpServer  # noqa: E402
from tests.helpers import ffmpeg_exe, free_port, make_sync_clip  # noqa: E402

HANDSHAKE_FROM_CLIENT = 1 + 1536 + 1536  # C0 + C1 + C2


@dataclass
class Run:
    name: str
    sent: dict[int, float] = field(default_factory=dict)  # video timestamp -> monotonic at the tap
    received: dict[int, float] = field(default_factory=dict)
    cpu_s: float = 0.0


class Tap:
    """Forwards a publisher's TCP stream and notes when each video message goes past."""

    def __init__(self, run: Run, upstream_port: int) -> None:
        self.run, self.upstream_port = run, upstream_port

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        chunks = ChunkReader()
        skip = HANDSHAKE_FROM_CLIENT

        async def client_to_server() -> None:
            nonlocal skip
            while data := await reader.read(65536):
                now = time.monotonic()
                up_writer.write(data)
                if skip:
                    taken = min(skip, len(data))
                    skip -= taken
                    data = data[taken:]
                try:
                    for message in chunks.read_messages(data):
                        if message.type_id == MessageType.VIDEO and len(message.payload) > 1 and message.payload[1] == 1:
                            self.run.sent.setdefault(message.timestamp, now)
                except ChunkError:
                    pass
            up_writer.close()

        async def server_to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
            writer.close()

        await asyncio.gather(client_to_server(), server_to_client(), return_exceptions=True)


class Receiver:
    """RTMP publish handler that stamps the arrival of every video frame."""

    def __init__(self, run: Run) -> None:
        self.run = run

    async def on_publish(self, request: PublishRequest, publisher: object) -> "Receiver":
        return self

    def on_metadata(self, metadata: dict) -> None:
        pass

    def on_audio(self, timestamp: int, payload: bytes) -> None:
        pass

    def on_video(self, timestamp: int, payload: bytes) -> None:
        if len(payload) > 1 and payload[1] == 1:
            self.run.received.setdefault(timestamp, time.monotonic())

    def on_close(self) -> None:
        pass


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def publish(clip: Path, url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [ffmpeg_exe(), "-loglevel", "error", "-re", "-readrate_initial_burst", "0", "-i", str(clip), "-c", "copy",
         "-tcp_nodelay", "1", "-f", "flv", url],
        stdin=subprocess.DEVNULL,
    )


async def measure(run: Run, clip: Path, seconds: float, start_sut, receiver_port: int) -> None:
    receiver = RtmpServer(Receiver(run), "127.0.0.1", receiver_port)
    await receiver.start()
    sut_pid, ingest_url, stop_sut = await start_sut()
    tap_port = free_port()
    ingest = urlsplit(ingest_url)
    assert ingest.port is not None
    tap = await asyncio.start_server(Tap(run, ingest.port).handle, "127.0.0.1", tap_port)
    tapped_url = urlunsplit(ingest._replace(netloc=f"{ingest.hostname}:{tap_port}"))
    cpu_before = cpu_seconds(sut_pid)
    publisher = publish(clip, tapped_url)
    await asyncio.to_thread(publisher.wait, seconds + 30)
    await asyncio.sleep(1.0)
    run.cpu_s = cpu_seconds(sut_pid) - cpu_before
    await stop_sut()
    tap.close()
    await receiver.stop()


def timestamp_offset(run: Run) -> int:
    """ffmpeg re-times its output by a constant few ms even with -copyts; find the shift that
    pairs up the most frames (0 for the relay, whose output keeps the input's timestamps)."""
    return max(range(-100, 101), key=lambda d: sum(1 for t in run.sent if t + d in run.received))


def summarise(run: Run, seconds: float, steady_from_ms: int) -> dict:
    offset = timestamp_offset(run)
    sent_steady = {t: s for t, s in run.sent.items() if t >= steady_from_ms}
    latencies = sorted((run.received[t + offset] - s) * 1000 for t, s in sent_steady.items() if t + offset in run.received)
    arrived = [t for t in run.received if t >= steady_from_ms]
    span_s = (max(arrived) - min(arrived)) / 1000 if len(arrived) > 1 else 0
    return {
        "frames_sent": len(run.sent),
        "frames_received": len(run.received),
        "frames_missing_steady": len(sent_steady) - len(latencies),
        "fps_out_steady": round((len(arrived) - 1) / span_s, 2) if span_s else 0.0,
        "latency_ms_p50": round(statistics.median(latencies), 1) if latencies else None,
        "latency_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
        "cpu_s_per_stream_s": round(run.cpu_s / seconds, 3),
        "timestamp_offset_ms": offset,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--steady-from", type=float, default=5.0, help="seconds of start-up left out of latency stats")
    parser.add_argument("--out", default="bench/out/relay.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hikari-bench-"))
    clip = make_sync_clip(work / "clip.flv", args.seconds)
    api_key = "hk_bench_key_0123456789abcdef0123456789"

    relay, baseline = Run("hikariedge"), Run("ffmpeg")
    receiver_port = free_port()
    target = f"rtmp://127.0.0.1:{receiver_port}/app/bench"

    async def start_node():
        http_port, rtmp_port = free_port(), free_port()
        env = {**os.environ, "HIKARIEDGE__AUTH__API_KEYS": api_key, "HIKARIEDGE__LOG_LEVEL": "WARNING"}
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_server.cli", "serve", "--http-port", str(http_port), "--rtmp-port", str(rtmp_port),
             "--data-dir", str(work / "data")],
            env=env, stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=1)
                break
            except OSError:
                await asyncio.sleep(0.1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/v1/sessions", data=json.dumps({"targets": [target]}).encode(), method="POST",
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        )
        body = json.loads(urllib.request.urlopen(request, timeout=5).read())

        async def stop() -> None:
            process.terminate()
            await asyncio.to_thread(process.wait, 10)

        return process.pid, f"{body['rtmp']['server_url']}/{body['rtmp']['stream_key']}", stop

    async def start_ffmpeg():
        port = free_port()
        process = subprocess.Popen(
            [ffmpeg_exe(), "-loglevel", "error", "-copyts", "-listen", "1", "-i", f"rtmp://127.0.0.1:{port}/live/x",
             "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-fps_mode", "passthrough", "-b:v", "4500k",
             "-c:a", "copy", "-f", "flv", target],
            stdin=subprocess.DEVNULL,
        )
        await asyncio.sleep(0.5)

        async def stop() -> None:
            await asyncio.to_thread(process.wait, 20)

        return process.pid, f"rtmp://127.0.0.1:{port}/live/x", stop

    await measure(relay, clip, args.seconds, start_node, receiver_port)
    await measure(baseline, clip, args.seconds, start_ffmpeg, receiver_port)
    steady_ms = int(args.steady_from * 1000)
    ours, theirs = summarise(relay, args.seconds, steady_ms), summarise(baseline, args.seconds, steady_ms)
    result = {
        "benchmark": "relay",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "stream": f"1280x720 30 fps testsrc2 + 48 kHz AAC, {args.seconds:.0f} s, latency over t >= {args.steady_from:.0f} s",
        "hikariedge": ours,
        "ffmpeg_baseline": theirs,
        "ratios": {
            "cpu": round(ours["cpu_s_per_stream_s"] / theirs["cpu_s_per_stream_s"], 3) if theirs["cpu_s_per_stream_s"] else None,
            "latency_p50": round(ours["latency_ms_p50"] / theirs["latency_ms_p50"], 3) if ours["latency_ms_p50"] and theirs["latency_ms_p50"] else None,
            "latency_p95": round(ours["latency_ms_p95"] / theirs["latency_ms_p95"], 3) if ours["latency_ms_p95"] and theirs["latency_ms_p95"] else None,
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
