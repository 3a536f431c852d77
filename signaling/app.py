"""The HTTP API (aiohttp): sessions and publish tokens, health, readiness and metrics.

Errors are JSON: {"error": {"status": 400, "code": "invalid_field", "message": ..., "field": ...}}.
Tokens and keys never reach a log line: the access log drops query strings and headers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from signaling.apikeys import ApiKey, ApiKeyRing
from signaling.models import Session, SessionState, ValidationError, parse_session_request
from signaling.service import LimitReached, SessionService
from signaling.tokens import IssuedToken

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LiveView(Protocol):
    """What the API needs from the media plane: readiness, per-session live figures, and live
    changes of face and targets (``edge_server.live.LiveManager``)."""

    def ready(self) -> bool: ...
    def stats(self, session_id: str) -> dict[str, Any] | None: ...
    async def switch_face(self, session: Any, fields: dict[str, Any]) -> str: ...
    def change_targets(self, session: Any, targets: list[Any]) -> str: ...


LIVE_FIELDS = frozenset({"mode", "persona", "targets"})  # what PATCH may change while the session is live
FACE_FIELDS = frozenset({"mode", "persona"})


@dataclass(frozen=True)
class PublishUrls:
    """Where OBS points: rtmp://<host>:<port>/<app> with the publish token as stream key,
    or <http_base_url>/whip/<session> with it as bearer token; viewers use /whep/<session>."""

    rtmp_server_url: str
    http_base_url: str = ""


def json_error(status: int, code: str, message: str, field: str | None = None, headers: dict | None = None) -> web.Response:
    body: dict[str, Any] = {"status": status, "code": code, "message": message}
    if field is not None:
        body["field"] = field
    return web.json_response({"error": body}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        return json_error(413, "body_too_large", exc.text or "request body too large")
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, headers=_allow_header(exc))
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "internal_error", "internal server error")


def _allow_header(exc: web.HTTPException) -> dict | None:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else None


class AccessLogger(AbstractAccessLogger):
    """Method, path without query string, status, duration. No headers, no tokens."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.1fms", request.method, _redact_path(request.path), response.status, time * 1000)


def _redact_path(path: str) -> str:
    """WHIP/WHEP resource URLs are capabilities (they allow PATCH and DELETE): keep them out of logs."""
    parts = path.split("/")
    if len(parts) == 4 and parts[1] in ("whip", "whep") and parts[3]:
        return "/".join(parts[:3] + ["***"])
    return path


class Api:
    persona_store: Any = None  # pipeline.persona_store.PersonaStore: set by the node to serve /v1/personas
    persona_check: Callable[[str, dict], Awaitable[None]] | None = None  # set by signaling.personas_api

    def __init__(
        self,
        service: SessionService,
        keys: ApiKeyRing,
        urls: PublishUrls,
        live: LiveView,
        registry: CollectorRegistry,
        *,
        max_targets: int,
        max_duration_s: int,
        webrtc: Any = None,  # signaling.whip.WebRtcPlane: WHIP/WHEP and play tokens when set
    ) -> None:
        self.webrtc = webrtc
        self.service = service
        self.keys = keys
        self.urls = urls
        self.live = live
        self.registry = registry
        self.max_targets = max_targets
        self.max_duration_s = max_duration_s
        self._live_switch = asyncio.Lock()

    # -- auth and body helpers -------------------------------------------------

    def _api_key(self, request: web.Request) -> ApiKey:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        key = self.keys.check(presented.strip()) if scheme.lower() == "bearer" and presented.strip() else None
        if key is None:
            log.warning("rejected API request: bad or missing API key", extra={"path": request.path, "peer": request.remote})
            raise _Reply(json_error(401, "unauthorized", "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"}))
        return key

    async def _json_body(self, request: web.Request) -> Any:
        if request.content_type != "application/json":
            raise _Reply(json_error(415, "unsupported_media_type", "body must be application/json"))
        raw = await request.read()  # raises 413 past client_max_size
        try:
            return json.loads(raw or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Reply(json_error(400, "invalid_json", f"body is not valid JSON: {exc}", field="body")) from None

    async def _owned_session(self, request: web.Request, key: ApiKey) -> Session:
        session = await self.service.get_owned(key.id, request.match_info["session_id"])
        if session is None:
            raise _Reply(json_error(404, "not_found", "no such session"))
        return session

    def _session_body(self, session: Session, token: IssuedToken | None = None) -> dict[str, Any]:
        body = session.public()
        body["rtmp"] = {"server_url": self.urls.rtmp_server_url}
        if token is not None:  # the stream key is shown when issued, never again
            body["rtmp"]["stream_key"] = token.token
            body["publish_token"] = {"token": token.token, "expires_at": token.claims.expires_at}
        body["live"] = self.live.stats(session.id) if session.state is SessionState.LIVE else None
        if self.webrtc is not None:
            body["whip"] = {"url": f"{self.urls.http_base_url}/whip/{session.id}"}
            if token is not None:
                body["whip"]["bearer_token"] = token.token
            body["whep"] = {"url": f"{self.urls.http_base_url}/whep/{session.id}", "play_tokens": f"/v1/sessions/{session.id}/play-tokens"}
        return body

    # -- handlers -----------------------------------------------------------------

    async def create_session(self, request: web.Request) -> web.Response:
        key = self._api_key(request)
        body = await self._json_body(request)
        try:
            fields = parse_session_request(body, max_targets=self.max_targets, max_duration_s=self.max_duration_s)
        except ValidationError as exc:
            return json_error(400, "invalid_field", exc.message, field=exc.field)
        if self.persona_check is not None:  # the persona must exist for this key (raises _Reply)
            await self.persona_check(key.id, fields)
        try:
            created = await self.service.create(key.id, fields)
        except LimitReached as exc:
            return json_error(503, "node_full", str(exc), headers={"Retry-After": "30"})
        return web.json_response(
            self._session_body(created.session, created.publish_token),
            status=201,
            headers={"Location": f"/v1/sessions/{created.session.id}"},
        )

    async def list_sessions(self, request: web.Request) -> web.Response:
        key = self._api_key(request)
        state = request.query.get("state")
        sessions = await self.service.store.list(owner=key.id)
        if state is not None:
            if state not in {s.value for s in SessionState}:
                return json_error(400, "invalid_field", "state must be idle, live or ended", field="state")
            sessions = [s for s in sessions if s.state.value == state]
        sessions.sort(key=lambda s: s.created_at)
        return web.json_response({"sessions": [self._session_body(s) for s in sessions]})

    async def get_session(self, request: web.Request) -> web.Response:
        key = self._api_key(request)
        return web.json_response(self._session_body(await self._owned_session(request, key)))

    async def update_session(self, request: web.Request) -> web.Response:
        key = self._api_key(request)
        session = await self._owned_session(request, key)
        body = await self._json_body(request)
        try:
            fields = parse_session_request(body, max_targets=self.max_targets, max_duration_s=self.max_duration_s, partial=True)
        except ValidationError as exc:
            return json_error(400, "invalid_field", exc.message, field=exc.field)
        if session.state is SessionState.ENDED:
            return json_error(409, "conflict", "session ended; settings change while it is idle (mode, persona and targets also while live)")
        blocked = sorted(set(fields) - LIVE_FIELDS)
        if session.state is SessionState.LIVE and blocked:
            return json_error(409, "conflict", f"session is live: only mode, persona and targets change now; {', '.join(blocked)} only while idle", field=blocked[0])
        if fields.get("mode", session.mode) == "persona" and fields.get("persona", session.persona) is None:
            return json_error(400, "invalid_field", "is required when mode is persona", field="persona")
        if self.persona_check is not None:
            await self.persona_check(key.id, fields)
        if not fields:
            return web.json_response(self._session_body(session))
        if session.state is SessionState.LIVE:
            async with self._live_switch:  # one at a time: what is stored is what the stream does
                reply = await self._change_live(session, fields)
                if reply is not None:
                    return reply
                updated = await self.service.update(session, fields, SessionState.LIVE)
                if updated is None:  # the publish ended meanwhile: the change is for the next one
                    updated = await self.service.update(session, fields, SessionState.IDLE)
        else:
            updated = await self.service.update(session, fields, SessionState.IDLE)
        if updated is None:
            return json_error(409, "conflict", "the session's state changed meanwhile; read it and try again")
        return web.json_response(self._session_body(updated))

    async def _change_live(self, session: Session, fields: dict[str, Any]) -> web.Response | None:
        """Give the running stream its new face and/or targets (the face first: if its pipeline
        cannot be built, nothing changes); None when done (or when no stream is left to change,
        and the change is only stored), else the error to answer."""
        face = {k: v for k, v in fields.items() if k in FACE_FIELDS}
        outcome = "switched"
        if face:
            try:
                outcome = await self.live.switch_face(session, face)
            except Exception:
                log.exception("session %s: the pipeline for the new face could not be built", session.id)
                return json_error(500, "pipeline_failed", "the masking pipeline for the new face could not be started; the stream keeps its face")
        if "targets" in fields and outcome == "switched":
            outcome = self.live.change_targets(session, fields["targets"])
        if outcome == "starting":
            return json_error(409, "starting", "the session is going live right now; try again in a moment", headers={"Retry-After": "1"})
        if outcome == "absent" and await self.service.is_live(session.id):
            return json_error(409, "conflict", "the session is live, but not on this node: change it from the node it streams to")
        return None

    async def delete_session(self, request: web.Request) -> web.Response:
        key = self._api_key(request)
        session = await self._owned_session(request, key)
        if session.state is SessionState.ENDED:
            return json_error(409, "conflict", "session already ended")
        ended = await self.service.end(session.id, "deleted")
        assert ended is not None
        return web.json_response(self._session_body(ended))

    async def rotate_publish_token(self, request: web.Request) -> web.Response:
        """Issue a new stream key and revoke the old one (a live publish carries on)."""
        key = self._api_key(request)
        session = await self._owned_session(request, key)
        if session.state is SessionState.ENDED:
            return json_error(409, "conflict", "session ended")
        token = await self.service.rotate_publish_token(session)
        return web.json_response(self._session_body(session, token), status=201)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "time": time.time()})

    async def readyz(self, request: web.Request) -> web.Response:
        store_ok = await self.service.store.ping()
        media_ok = self.live.ready()
        status = 200 if store_ok and media_ok else 503
        return web.json_response({"ready": status == 200, "store": store_ok, "media": media_ok}, status=status)

    async def metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response


class _Reply(Exception):
    """Carries a finished error response out of a helper."""

    def __init__(self, response: web.Response) -> None:
        self.response = response


@web.middleware
async def reply_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Reply as reply:
        return reply.response


def create_app(api: Api, max_body_bytes: int) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes, middlewares=[error_middleware, reply_middleware])
    app.router.add_post("/v1/sessions", api.create_session)
    app.router.add_get("/v1/sessions", api.list_sessions)
    app.router.add_get("/v1/sessions/{session_id}", api.get_session)
    app.router.add_patch("/v1/sessions/{session_id}", api.update_session)
    app.router.add_delete("/v1/sessions/{session_id}", api.delete_session)
    app.router.add_post("/v1/sessions/{session_id}/publish-token", api.rotate_publish_token)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    if api.webrtc is not None:
        from signaling.whip import WebRtcRoutes, add_webrtc_routes  # imports this module

        add_webrtc_routes(app, WebRtcRoutes(api, api.webrtc, api.webrtc.settings))
    if api.persona_store is not None:
        from signaling.personas_api import add_persona_routes  # imports this module

        add_persona_routes(app, api, api.persona_store)
    from signaling.web import add_web_routes  # the studio page and the embeddable player

    add_web_routes(app)
    return app
