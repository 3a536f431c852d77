"""Shared helpers for tests that use real ffmpeg clients and a real in-process node."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

API_KEY = "hk_test_key_for_the_suite_0123456789abcdef"


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_sync_clip(path: Path, seconds: float, size: str = "1280x720", fps: int = 30) -> Path:
    """testsrc2 + sine, H.264 + AAC in FLV, with a white flash and a beep at the start of each
    second so that audio/video sync can be measured on the far side."""
    video = (
        f"testsrc2=size={size}:rate={fps},"
        "drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable='lt(mod(t\\,1)\\,0.03)'"
    )
    audio = "sine=frequency=1000:sample_rate=48000,volume=volume=0:enable='gte(mod(t\\,1)\\,0.1)'"
    subprocess.run(
        [ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", video, "-f", "lavfi", "-i", audio,
         "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", str(fps), "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", "128k", "-ac", "2", "-f", "flv", str(path)],
        check=True,
    )
    return path


def publish(clip: Path, url: str, extra: list[str] | None = None) -> subprocess.Popen:
    """Publish a clip in real time with the ffmpeg CLI (stream copy: the clip is already H.264 + AAC).

    `-readrate_initial_burst 0`: like a camera, send frames as they happen. ffmpeg's default
    sends the first 0.5 s at once, and the node rightly drops those stale frames."""
    return subprocess.Popen(
        [ffmpeg_exe(), "-loglevel", "error", "-re", "-readrate_initial_burst", "0", "-i", str(clip), "-c", "copy", *(extra or []), "-tcp_nodelay", "1", "-f", "flv", url],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


@dataclass
class Receiver:
    """An independent RTMP receiver: `ffmpeg -listen 1` writing what it gets to an FLV file.

    `-copyts` keeps the relay's timestamps, so that tests can match frames to the source."""

    process: subprocess.Popen
    path: Path
    url: str

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            return self.process.wait(5)


def _listening(port: int) -> bool:
    """Whether a socket listens on ``port`` (read from /proc, without connecting: a probe
    connection would be the one client `ffmpeg -listen 1` accepts)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def start_receiver(path: Path, port: int | None = None, key: str = "target-key", listen_timeout: float = 10.0) -> Receiver:
    """Started and listening: a relay that dials it at once is not refused (which would
    make its first frames wait for a reconnect, and a test count them missing)."""
    port = port or free_port()
    url = f"rtmp://127.0.0.1:{port}/app/{key}"
    process = subprocess.Popen(
        [ffmpeg_exe(), "-loglevel", "error", "-y", "-listen", "1", "-timeout", "30", "-copyts", "-i", url, "-c", "copy", "-f", "flv", str(path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + listen_timeout
    while not _listening(port) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return Receiver(process, path, url)


async def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


@dataclass
class Received:
    video_pts_ms: list[int]
    audio_pts_ms: list[int]
    flash_ms: list[int]  # video frames that are mostly white
    beep_ms: list[int]  # audio onsets after silence
    width: int
    height: int


def analyse_flv(path: Path) -> Received:
    """Decode a received FLV: timestamps of every frame, and when flashes and beeps occur."""
    container = av.open(str(path))
    video_pts: list[int] = []
    audio_pts: list[int] = []
    flashes: list[int] = []
    beeps: list[int] = []
    width = height = 0
    silent = True
    for frame in container.decode(*container.streams):
        ms = int(round(frame.pts * frame.time_base * 1000))
        if isinstance(frame, av.VideoFrame):
            video_pts.append(ms)
            width, height = frame.width, frame.height
            luma = frame.to_ndarray(format="gray")[::8, ::8]
            if luma.mean() > 200:
                flashes.append(ms)
        else:
            audio_pts.append(ms)
            samples = np.abs(frame.to_ndarray()).max(axis=0)
            loud = np.nonzero(samples > 0.05)[0]
            if silent and loud.size:
                beeps.append(ms + int(loud[0] * 1000 / frame.sample_rate))
            silent = samples[-64:].max() < 0.05 if samples.size else silent
    container.close()
    return Received(video_pts, audio_pts, flashes, beeps, width, height)


def have_shared_eval() -> Path | None:
    """The real-face evaluation media (``../shared/eval``, see bench.eval_lib.default_eval_dir), or None."""
    from bench.eval_lib import default_eval_dir

    path = default_eval_dir()
    return path if path.is_dir() else None


def which(name: str) -> str | None:
    return shutil.which(name)
