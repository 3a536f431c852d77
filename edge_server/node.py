"""One HikariEdge node: the HTTP API and the RTMP ingest in one process, wired together."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from edge_server.config import ServerConfig
from edge_server.live import LiveManager
from edge_server.media.egress import EgressSettings
from edge_server.metrics import MediaMetrics
from edge_server.rtmp.server import RtmpServer
from edge_server.runtime import RuntimeSettings
from edge_server.webrtc.gateway import WebRtcGateway
from pipeline.factory import build_processor
from pipeline.persona import Persona
from pipeline.persona_store import PersonaStore
from pipeline.stage import FrameProcessor
from signaling.apikeys import ApiKeyRing, load_or_create_dev_key
from signaling.app import AccessLogger, Api, PublishUrls, create_app
from signaling.whip import WebRtcHttpSettings
from signaling.service import SessionService
from signaling.store import InMemorySessionStore
from signaling.tokens import TokenIssuer

log = logging.getLogger(__name__)


@dataclass
class StartupInfo:
    http_url: str
    rtmp_server_url: str
    new_dev_key: str | None  # shown once, on the first start with a fresh data dir


class Node:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = MediaMetrics()
        self.keys = ApiKeyRing(config.auth.api_keys)
        self.new_dev_key: str | None = None
        if not len(self.keys):
            self.new_dev_key, entry = load_or_create_dev_key(Path(config.data_dir))
            self.keys.add(entry)
        self.store = InMemorySessionStore()
        self.personas = PersonaStore.in_data_dir(config.data_dir)  # <data_dir>/personas, plus the builtins
        self.service = SessionService(
            self.store,
            TokenIssuer(config.auth.token_secret),
            publish_token_ttl_s=config.auth.publish_token_ttl_s,
            max_sessions=config.limits.max_sessions,
            max_live_sessions=config.limits.max_live_sessions,
        )
        e = config.egress
        settings = RuntimeSettings(
            default_fps=config.encoder.default_fps,
            bitrate_kbps=config.encoder.bitrate_kbps,
            gop_seconds=config.encoder.gop_seconds,
            preset=config.encoder.preset,
            encoder_threads=config.encoder.threads,
            egress=EgressSettings(e.reconnect_initial_s, e.reconnect_max_s, e.queue_seconds, e.io_timeout_s),
            aac_bitrate_kbps=config.webrtc.audio_bitrate_kbps,
            opus_bitrate_kbps=config.webrtc.opus_bitrate_kbps,
            lookahead_frames=config.pipeline.lookahead_frames,
        )
        self.live = LiveManager(
            self.service, self.metrics, settings, self._make_processor, config.rtmp.app
        )
        self.rtmp = RtmpServer(
            self.live,
            config.rtmp.host,
            config.rtmp.port,
            handshake_timeout=config.rtmp.handshake_timeout_s,
            idle_timeout=config.rtmp.idle_timeout_s,
        )
        self.webrtc: WebRtcGateway | None = None
        if config.webrtc.enabled:
            a = config.auth
            self.webrtc = WebRtcGateway(
                self.live, self.service, config.webrtc, self.metrics,
                WebRtcHttpSettings(a.play_token_ttl_s, a.play_token_max_ttl_s, config.webrtc.cors_allow_origin),
            )
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    def _make_processor(self, session: Any) -> FrameProcessor:
        """The session's masking pipeline, reporting covered events and stage times to metrics."""
        metrics = self.metrics

        def on_cover(reason: str) -> None:
            metrics.count_cover(session.id, reason)

        def on_timings(ms: dict[str, float]) -> None:
            for stage, value in ms.items():
                metrics.pipeline_stage_seconds.labels(stage).observe(value / 1000.0)

        persona = self.resolve_persona(session.persona, session.owner) if session.persona else None
        return build_processor(self.config.pipeline, session.mode, persona, on_cover=on_cover, on_timings=on_timings)

    def resolve_persona(self, persona_id: str, owner: str | None = None) -> Persona | None:
        """The session's persona (a builtin, or one stored for ``owner``). None if it is gone:
        the masker then gives the face an ephemeral persona, so it is still never shown."""
        persona = self.personas.get(persona_id, owner)
        if persona is None:
            log.warning("persona %s not found; the face gets an ephemeral one", persona_id)
        return persona

    @property
    def rtmp_port(self) -> int:
        return self.rtmp.port

    @property
    def http_port(self) -> int:
        assert self._runner is not None and self._runner.addresses, "node not started"
        return self._runner.addresses[0][1]

    def rtmp_server_url(self) -> str:
        return f"rtmp://{self.config.public.host}:{self.rtmp.port}/{self.config.rtmp.app}"

    async def start(self) -> StartupInfo:
        await self.rtmp.start()
        api = Api(
            self.service,
            self.keys,
            PublishUrls(self.rtmp_server_url()),
            self.live,
            self.metrics.registry,
            max_targets=self.config.limits.max_targets,
            max_duration_s=self.config.limits.max_duration_s,
            webrtc=self.webrtc,
        )
        api.persona_store = self.personas
        app = create_app(api, self.config.http.max_body_bytes)
        self._runner = web.AppRunner(app, access_log_class=AccessLogger)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.config.http.host, self.config.http.port)
        await self._site.start()
        self.live.set_accepting(True)
        http_url = f"{self.config.public.http_scheme}://{self.config.public.host}:{self.http_port}"
        api.urls = PublishUrls(self.rtmp_server_url(), http_url)  # the port is known now (it may have been 0)
        return StartupInfo(http_url, self.rtmp_server_url(), self.new_dev_key)

    async def stop(self) -> None:
        self.live.set_accepting(False)
        await self.rtmp.stop()
        if self.webrtc is not None:
            await self.webrtc.close_all()
        await self.live.stop_all()
        if self._runner is not None:
            await self._runner.cleanup()
