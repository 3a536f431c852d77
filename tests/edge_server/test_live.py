"""LiveManager: the session's pipeline is built off the event loop, and the publish is
refused cleanly when the session ends meanwhile or the build fails."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edge_server.live import LiveManager
from edge_server.metrics import MediaMetrics
from edge_server.runtime import RuntimeSettings
from pipeline.stage import IdentityProcessor
from signaling.service import PublishDenied, SessionService
from signaling.store import InMemorySessionStore
from signaling.tokens import TokenIssuer


SESSION = {"mode": "anonymize", "persona": None, "targets": [], "max_duration_s": None}


class RecordingProcessor(IdentityProcessor):
    def __init__(self) -> None:
        self.built_on = threading.get_ident()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _service() -> SessionService:
    return SessionService(InMemorySessionStore(), TokenIssuer(None), publish_token_ttl_s=600, max_sessions=4, max_live_sessions=4)


def _manager(service: SessionService, factory) -> LiveManager:
    manager = LiveManager(service, MediaMetrics(), RuntimeSettings(), factory, "live")
    manager.set_accepting(True)
    return manager


async def _publish(manager: LiveManager, service: SessionService):
    created = await service.create("partner", SESSION)
    kicks: list[str] = []
    runtime = await manager.begin_webrtc_publish(created.publish_token.token, created.session.id, kicks.append, "test")
    return created, runtime


def test_the_pipeline_is_built_off_the_event_loop() -> None:
    async def main() -> None:
        built: list[RecordingProcessor] = []

        def factory(session):
            built.append(RecordingProcessor())
            return built[-1]

        service = _service()
        manager = _manager(service, factory)
        created, runtime = await _publish(manager, service)
        try:
            assert built and built[0].built_on != threading.get_ident()
            assert await service.is_live(created.session.id)
            assert manager.stats(created.session.id)["starting"] is False
        finally:
            await manager.publisher_gone(created.session.id, runtime)
        assert not await service.is_live(created.session.id)

    asyncio.run(main())


def test_a_session_ended_while_its_pipeline_is_built_does_not_go_live() -> None:
    async def main() -> None:
        release = threading.Event()
        built: list[RecordingProcessor] = []

        def factory(session):
            assert release.wait(5.0)
            built.append(RecordingProcessor())
            return built[-1]

        service = _service()
        manager = _manager(service, factory)
        created = await service.create("partner", SESSION)
        publish = asyncio.ensure_future(
            manager.begin_webrtc_publish(created.publish_token.token, created.session.id, lambda reason: None, "test")
        )
        await asyncio.sleep(0.05)  # the build is under way on its thread; the loop is free
        stats = manager.stats(created.session.id)
        assert stats is not None and stats["starting"] and stats["frames_in"] == 0 and stats["protocol"] == "whip"
        await service.end(created.session.id, "deleted")
        release.set()
        with pytest.raises(PublishDenied) as denied:
            await publish
        assert denied.value.status == 404
        assert built and built[0].closed
        assert not manager._live

    asyncio.run(main())


def test_a_pipeline_that_fails_to_build_leaves_the_session_idle() -> None:
    async def main() -> None:
        attempts = []

        def factory(session):
            attempts.append(session.id)
            if len(attempts) == 1:
                raise RuntimeError("injected: model file unreadable")
            return RecordingProcessor()

        service = _service()
        manager = _manager(service, factory)
        created = await service.create("partner", SESSION)
        token, sid = created.publish_token.token, created.session.id
        with pytest.raises(PublishDenied) as denied:
            await manager.begin_webrtc_publish(token, sid, lambda reason: None, "test")
        assert denied.value.status == 500
        assert not await service.is_live(sid)
        runtime = await manager.begin_webrtc_publish(token, sid, lambda reason: None, "test")  # the key still works
        await manager.publisher_gone(sid, runtime)

    asyncio.run(main())


def test_a_live_face_switch_is_built_off_the_loop_and_handed_to_the_stream() -> None:
    async def main() -> None:
        built: list[tuple[str, RecordingProcessor]] = []
        release = threading.Event()
        release.set()

        def factory(session):
            assert release.wait(5.0)
            if session.mode == "pixelate":
                raise RuntimeError("injected: the new face's pipeline cannot be built")
            built.append((session.mode, RecordingProcessor()))
            return built[-1][1]

        service = _service()
        manager = _manager(service, factory)
        idle = await service.create("partner", SESSION)
        assert await manager.switch_face(idle.session, {"mode": "blur"}) == "absent"  # no stream to change
        created, runtime = await _publish(manager, service)
        try:
            assert await manager.switch_face(created.session, {"mode": "blur"}) == "switched"
            mode, processor = built[-1]
            assert mode == "blur" and processor.built_on != threading.get_ident()
            assert runtime._next_processor is processor  # taken up with the next frame
            assert created.session.mode == "anonymize"  # the stored session is the API's to change
            with pytest.raises(RuntimeError):
                await manager.switch_face(created.session, {"mode": "pixelate"})
            assert runtime._next_processor is processor  # a failed build changes nothing
            sample = manager.metrics.registry.get_sample_value
            counted = {r: sample("hikariedge_face_switches_total", {"result": r}) for r in ("switched", "failed")}
            assert counted == {"switched": 1, "failed": 1}
        finally:
            await manager.publisher_gone(created.session.id, runtime)
        assert processor.closed  # closed with the stream, never used

        # while the first pipeline is still being built: nothing to switch yet
        release.clear()
        other = await service.create("partner", SESSION)
        publish = asyncio.ensure_future(
            manager.begin_webrtc_publish(other.publish_token.token, other.session.id, lambda reason: None, "test")
        )
        await asyncio.sleep(0.05)
        assert await manager.switch_face(other.session, {"mode": "blur"}) == "starting"
        release.set()
        await manager.publisher_gone(other.session.id, await publish)

    asyncio.run(main())
