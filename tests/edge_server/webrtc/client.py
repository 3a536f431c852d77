"""Real aiortc clients for the tests: a WHIP publisher and a WHEP viewer, on loopback."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from edge_server.webrtc import ice

LOOPBACK = ice.HostPolicy(allow_loopback=True)


def client_pc() -> RTCPeerConnection:
    return RTCPeerConnection(ice.rtc_configuration([]))  # no STUN: nothing leaves the machine


async def local_offer(pc: RTCPeerConnection) -> str:
    offer = await pc.createOffer()
    with ice.host_policy(LOOPBACK):
        await pc.setLocalDescription(offer)
    return pc.localDescription.sdp


def prefer(transceiver: Any, kind: str, mime: str) -> None:
    codecs = [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType.lower() in (mime.lower(), f"{kind}/rtx")]
    transceiver.setCodecPreferences(codecs)


@dataclass
class Exchange:
    pc: RTCPeerConnection
    status: int
    location: str | None
    etag: str | None
    body: str
    headers: Any = None


async def post_offer(url: str, token: str | None, sdp: str, content_type: str = "application/sdp") -> tuple[int, dict, str]:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=sdp.encode(), headers=headers) as resp:
            return resp.status, resp.headers.copy(), await resp.text()


async def whip_publish(url: str, token: str, video: MediaStreamTrack | None, audio: MediaStreamTrack | None = None,
                       video_codec: str = "video/H264") -> Exchange:
    pc = client_pc()
    if video is not None:
        prefer(pc.addTransceiver(video, direction="sendonly"), "video", video_codec)
    if audio is not None:
        prefer(pc.addTransceiver(audio, direction="sendonly"), "audio", "audio/opus")
    sdp = await local_offer(pc)
    status, headers, body = await post_offer(url, token, sdp)
    if status == 201:
        await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    return Exchange(pc, status, headers.get("Location"), headers.get("ETag"), body, headers)


@dataclass
class Viewer:
    exchange: Exchange
    video_frames: list[tuple[float, int, int, int]] = field(default_factory=list)  # (arrival, pts, width, height)
    audio_frames: list[tuple[float, int, int]] = field(default_factory=list)  # (arrival, pts, loudness)
    first_video_frame: av.VideoFrame | None = None
    keep_frames: int = 0
    kept: list[av.VideoFrame] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.exchange.pc.close()


async def whep_play(url: str, token: str, audio: bool = True, keep_frames: int = 0) -> Viewer:
    pc = client_pc()
    pc.addTransceiver("video", direction="recvonly")
    if audio:
        pc.addTransceiver("audio", direction="recvonly")
    viewer = Viewer(Exchange(pc, 0, None, None, ""), keep_frames=keep_frames)

    async def consume(track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if isinstance(frame, av.VideoFrame):
                viewer.video_frames.append((now, int(frame.pts or 0), frame.width, frame.height))
                if len(viewer.kept) < viewer.keep_frames:
                    viewer.kept.append(frame)
            else:
                samples = frame.to_ndarray()
                viewer.audio_frames.append((now, int(frame.pts or 0), int(abs(samples).max()) if samples.size else 0))

    pc.on("track", lambda track: viewer.tasks.append(asyncio.ensure_future(consume(track))))
    sdp = await local_offer(pc)
    status, headers, body = await post_offer(url, token, sdp)
    viewer.exchange = Exchange(pc, status, headers.get("Location"), headers.get("ETag"), body, headers)
    if status == 201:
        await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    return viewer


async def delete(base: str, location: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.delete(base + location) as resp:
            return resp.status
