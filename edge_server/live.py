"""Live publishes on this node: authorises RTMP publishers, runs one SessionRuntime each,
ends them on disconnect, DELETE or max duration."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable

from edge_server.metrics import MediaMetrics
from edge_server.runtime import RuntimeSettings, SessionRuntime
from pipeline.stage import FrameProcessor
from signaling.service import PublishDenied, SessionService

log = logging.getLogger(__name__)


@dataclass
class _LivePublish:
    runtime: SessionRuntime
    kick: Callable[[str], None]  # closes the publisher's connection
    timer: asyncio.TimerHandle | None


class _RuntimeSink:
    """Adapts the RTMP MediaSink calls onto the runtime and reports the close once."""

    def __init__(self, manager: "LiveManager", session_id: str, runtime: SessionRuntime) -> None:
        self._manager, self._session_id, self._runtime = manager, session_id, runtime
        self.on_metadata = runtime.on_metadata
        self.on_video = runtime.on_video
        self.on_audio = runtime.on_audio

    def on_close(self) -> None:
        asyncio.get_running_loop().create_task(self._manager._publisher_gone(self._session_id, self._runtime))


class LiveManager:
    def __init__(
        self,
        service: SessionService,
        metrics: MediaMetrics,
        settings: RuntimeSettings,
        processor_factory: Callable[[Any], FrameProcessor],
        rtmp_app: str,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.settings = settings
        self.processor_factory = processor_factory
        self.rtmp_app = rtmp_app
        self._live: dict[str, _LivePublish] = {}
        self._accepting = False
        service.add_end_listener(self._on_session_ended)

    # -- the RTMP server's PublishHandler --------------------------------------------

    async def on_publish(self, request: Any, publisher: Any) -> _RuntimeSink | None:
        if request.app.strip("/") != self.rtmp_app:
            self.metrics.rejected_publishes.labels("unknown_app").inc()
            log.warning("publish refused from %s: unknown app %r", request.peer, request.app)
            return None
        try:
            session = await self.service.begin_publish(request.stream_key)
        except PublishDenied as denied:
            self.metrics.rejected_publishes.labels(str(denied.status)).inc()
            log.warning("publish refused from %s: %s", request.peer, denied.reason)  # never the key itself
            return None
        runtime = SessionRuntime(session.id, session.targets, self.processor_factory(session), self.settings, self.metrics)
        runtime.start()
        remaining = self.service.remaining_live_seconds(session)
        loop = asyncio.get_running_loop()
        timer = None
        if remaining is not None:
            timer = loop.call_later(remaining, lambda: loop.create_task(self.service.end(session.id, "max_duration")))
        self._live[session.id] = _LivePublish(runtime, publisher.close, timer)
        self.metrics.active_sessions.set(len(self._live))
        log.info("session %s live from %s with %d target(s)", session.id, request.peer, len(session.targets))
        return _RuntimeSink(self, session.id, runtime)

    # -- endings ----------------------------------------------------------------------

    async def _publisher_gone(self, session_id: str, runtime: SessionRuntime) -> None:
        live = self._live.get(session_id)
        if live is None or live.runtime is not runtime:
            return
        del self._live[session_id]
        if live.timer is not None:
            live.timer.cancel()
        self.metrics.active_sessions.set(len(self._live))
        await asyncio.get_running_loop().run_in_executor(None, runtime.stop)
        await self.service.end_publish(session_id)
        self.metrics.forget_session(session_id)
        log.info("session %s publish closed: %d frames in, %d out, dropped %s", session_id, runtime.frames_in, runtime.frames_out, dict(runtime.dropped))

    async def _on_session_ended(self, session_id: str, reason: str) -> None:
        live = self._live.get(session_id)
        if live is not None:
            live.kick(f"session ended: {reason}")  # the sink's on_close then stops the runtime

    async def stop_all(self) -> None:
        for session_id, live in list(self._live.items()):
            live.kick("server shutting down")
            await self._publisher_gone(session_id, live.runtime)

    # -- LiveView for the HTTP API ------------------------------------------------------

    def set_accepting(self, accepting: bool) -> None:
        self._accepting = accepting

    def ready(self) -> bool:
        return self._accepting

    def stats(self, session_id: str) -> dict[str, Any] | None:
        live = self._live.get(session_id)
        return live.runtime.stats() if live is not None else None

    def runtime(self, session_id: str) -> SessionRuntime | None:
        live = self._live.get(session_id)
        return live.runtime if live is not None else None
