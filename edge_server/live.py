"""Live publishes on this node: authorises RTMP and WHIP publishers, runs one SessionRuntime
each, ends them on disconnect, DELETE or max duration; keeps each session's WHEP viewers
(a ViewerHub that outlives a publish, so viewers stay across an OBS reconnect)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable

from edge_server.metrics import MediaMetrics
from edge_server.runtime import RuntimeSettings, SessionRuntime
from edge_server.webrtc.hub import ViewerHub
from pipeline.stage import FrameProcessor
from signaling.service import PublishDenied, SessionService

log = logging.getLogger(__name__)


@dataclass
class _LivePublish:
    runtime: SessionRuntime
    kick: Callable[[str], None]  # closes the publisher's connection
    timer: asyncio.TimerHandle | None
    protocol: str = "rtmp"


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
        self._starting: dict[str, str] = {}  # session id -> protocol, while its pipeline is built
        self._hubs: dict[str, ViewerHub] = {}
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
            runtime = await self._start(session, publisher.close, "rtmp", request.peer)
        except PublishDenied as denied:
            self.metrics.rejected_publishes.labels(str(denied.status)).inc()
            log.warning("publish refused from %s: %s", request.peer, denied.reason)  # never the key itself
            return None
        return _RuntimeSink(self, session.id, runtime)

    async def begin_webrtc_publish(self, token: str, session_id: str, kick: Callable[[str], None], peer: str) -> SessionRuntime:
        """A WHIP publisher: same rules and state machine as RTMP. Raises PublishDenied."""
        if not self._accepting:
            raise PublishDenied(503, "node is not accepting publishes")
        try:
            session = await self.service.begin_publish(token, session_id=session_id)
            return await self._start(session, kick, "whip", peer)
        except PublishDenied as denied:
            self.metrics.rejected_publishes.labels(str(denied.status)).inc()
            log.warning("WHIP publish refused from %s: %s", peer, denied.reason)  # never the token itself
            raise

    async def _start(self, session: Any, kick: Callable[[str], None], protocol: str, peer: str) -> SessionRuntime:
        """Build the session's processor off the event loop, then go live.

        Building the masker (models, persona, warm-up) takes 70-200 ms: on the loop it would
        stall every other session's media for that long. A session that ends (DELETE) while
        it is built does not go live; a build that fails puts the session back to idle.
        """
        self._starting[session.id] = protocol
        try:
            processor = await asyncio.get_running_loop().run_in_executor(None, self.processor_factory, session)
        except Exception:
            log.exception("session %s: the pipeline could not be built; publish refused", session.id)
            await self.service.end_publish(session.id)
            raise PublishDenied(500, "the masking pipeline could not be started") from None
        finally:
            del self._starting[session.id]
        if not await self.service.is_live(session.id):
            processor.close()
            raise PublishDenied(404, "session ended while its pipeline was being built")
        return self._go_live(session, processor, kick, protocol, peer)

    def _go_live(self, session: Any, processor: FrameProcessor, kick: Callable[[str], None], protocol: str, peer: str) -> SessionRuntime:
        runtime = SessionRuntime(
            session.id, session.targets, processor, self.settings, self.metrics, viewers=self.viewer_hub(session.id)
        )
        runtime.start()
        remaining = self.service.remaining_live_seconds(session)
        loop = asyncio.get_running_loop()
        timer = None
        if remaining is not None:
            timer = loop.call_later(remaining, lambda: loop.create_task(self.service.end(session.id, "max_duration")))
        self._live[session.id] = _LivePublish(runtime, kick, timer, protocol)
        self.metrics.active_sessions.set(len(self._live))
        log.info("session %s live over %s from %s with %d target(s)", session.id, protocol, peer, len(session.targets))
        return runtime

    async def publisher_gone(self, session_id: str, runtime: SessionRuntime) -> None:
        """The publisher (RTMP connection or WHIP peer) went away; idempotent."""
        await self._publisher_gone(session_id, runtime)

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
        self._release_hub(session_id)
        log.info("session %s publish closed: %d frames in, %d out, dropped %s", session_id, runtime.frames_in, runtime.frames_out, dict(runtime.dropped))

    async def _on_session_ended(self, session_id: str, reason: str) -> None:
        live = self._live.get(session_id)
        if live is not None:
            live.kick(f"session ended: {reason}")  # the sink's on_close then stops the runtime
        hub = self._hubs.get(session_id)
        if hub is not None:
            hub.close_all(f"session ended: {reason}")  # each viewer's close removes it from the hub

    async def stop_all(self) -> None:
        for session_id, live in list(self._live.items()):
            live.kick("server shutting down")
            await self._publisher_gone(session_id, live.runtime)
        for hub in list(self._hubs.values()):
            hub.close_all("server shutting down")

    # -- WHEP viewers ---------------------------------------------------------------------

    def viewer_hub(self, session_id: str) -> ViewerHub:
        hub = self._hubs.get(session_id)
        if hub is None:
            gauge = self.metrics.whep_viewers.labels(session_id)
            hub = ViewerHub(session_id, asyncio.get_running_loop(), on_count=lambda n: self._count_viewers(gauge, n))
            self._hubs[session_id] = hub
        return hub

    def viewer_left(self, session_id: str) -> None:
        self._release_hub(session_id)

    def viewer_count(self, session_id: str | None = None) -> int:
        if session_id is not None:
            hub = self._hubs.get(session_id)
            return len(hub) if hub is not None else 0
        return sum(len(hub) for hub in self._hubs.values())

    def _count_viewers(self, gauge: Any, count: int) -> None:
        gauge.set(count)
        self.metrics.whep_viewers_all.set(self.viewer_count())

    def _release_hub(self, session_id: str) -> None:
        hub = self._hubs.get(session_id)
        if hub is not None and not len(hub) and session_id not in self._live:
            del self._hubs[session_id]
            self.metrics.forget_viewers(session_id)

    # -- LiveView for the HTTP API ------------------------------------------------------

    def set_accepting(self, accepting: bool) -> None:
        self._accepting = accepting

    def ready(self) -> bool:
        return self._accepting

    def stats(self, session_id: str) -> dict[str, Any] | None:
        live = self._live.get(session_id)
        if live is None:
            protocol = self._starting.get(session_id)
            if protocol is None:
                return None
            return {**SessionRuntime.idle_stats(), "protocol": protocol, "viewers": self.viewer_count(session_id), "starting": True}
        return {**live.runtime.stats(), "protocol": live.protocol, "viewers": self.viewer_count(session_id), "starting": False}

    async def switch_face(self, session: Any, fields: dict[str, Any]) -> str:
        """A live session's new ``mode`` and/or ``persona``: its pipeline is built off the
        event loop (as at going live), then handed to the running stream, which takes it up
        between two frames (``SessionRuntime.replace_processor``); the old face stays on
        until then, so no frame goes out unmasked. A build that fails raises, and the stream
        keeps its face.

        Returns "switched"; "starting" while the session's first pipeline is still being
        built (nothing changed: ask again); "absent" when this node runs no stream for it.
        """
        live = self._live.get(session.id)
        if live is None:
            return "starting" if session.id in self._starting else "absent"
        candidate = dataclasses.replace(session, **fields)
        try:
            processor = await asyncio.get_running_loop().run_in_executor(None, self.processor_factory, candidate)
        except Exception:
            self.metrics.face_switches.labels("failed").inc()
            raise
        current = self._live.get(session.id)
        if current is None or current.runtime is not live.runtime or not live.runtime.replace_processor(processor):
            processor.close()  # the publish ended while the new face was built
            return "absent"
        self.metrics.face_switches.labels("switched").inc()
        log.info("session %s: face switching to mode %s", session.id, candidate.mode)
        return "switched"

    def change_targets(self, session: Any, targets: list[Any]) -> str:
        """A live session's new target list, applied to its running stream at once (targets
        that stay keep their connections; ``SessionRuntime.replace_targets``). Returns
        "changed", or "starting" / "absent" as ``switch_face`` does."""
        live = self._live.get(session.id)
        if live is None:
            return "starting" if session.id in self._starting else "absent"
        live.runtime.replace_targets(targets)
        return "changed"

    def runtime(self, session_id: str) -> SessionRuntime | None:
        live = self._live.get(session_id)
        return live.runtime if live is not None else None
