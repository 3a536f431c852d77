"""WHIP (RFC 9725) and WHEP HTTP exchange, and play tokens: aiohttp handlers, no media.

- POST   /whip/{session}           application/sdp offer + publish token -> 201 answer, Location, ETag
- POST   /whep/{session}           application/sdp offer + play token    -> 201 answer (sendonly), Location, ETag
- PATCH  /whip|whep/{session}/{r}  application/trickle-ice-sdpfrag       -> 204 (If-Match: the ETag or "*")
- DELETE /whip|whep/{session}/{r}                                        -> 200, the publish/viewer ends
- OPTIONS on both                                                         -> 204, Accept-Post / Accept-Patch, CORS
- POST   /v1/sessions/{id}/play-tokens   (API key)                       -> 201 {token, expires_at, whep_url}

The resource URL is the capability for PATCH/DELETE: 192 random bits, never logged in full.
The media plane behind `WebRtcPlane` (edge_server/webrtc/gateway.py) owns the peers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from aiohttp import web

from signaling.models import SessionState
from signaling.service import PublishDenied

if TYPE_CHECKING:
    from signaling.app import Api

log = logging.getLogger(__name__)

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
PROTOCOLS = ("whip", "whep")
RETRY_AFTER_S = "30"


class WebRtcError(Exception):
    """A refusal from the media plane with its HTTP status; the message is safe to return."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class PeerAnswer:
    resource_id: str
    sdp: str
    etag: str  # quoted entity tag of the ICE session
    links: tuple[str, ...] = ()  # Link: <stun:...>; rel="ice-server"


@dataclass(frozen=True)
class WebRtcHttpSettings:
    play_token_ttl_s: int = 300
    play_token_max_ttl_s: int = 86400
    cors_allow_origin: str = "*"


class WebRtcPlane(Protocol):
    settings: WebRtcHttpSettings

    async def publish(self, session_id: str, token: str, offer: str, peer: str) -> PeerAnswer: ...
    async def play(self, session_id: str, token: str, offer: str, peer: str) -> PeerAnswer: ...
    def etag(self, protocol: str, session_id: str, resource_id: str) -> str | None: ...
    async def trickle(self, protocol: str, session_id: str, resource_id: str, fragment: str) -> None: ...
    async def delete(self, protocol: str, session_id: str, resource_id: str) -> bool: ...
    def count_request(self, protocol: str, method: str, status: int) -> None: ...


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    from signaling.app import json_error

    return json_error(status, code, message, headers=headers)


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _if_match_ok(header: str, etag: str) -> bool:
    tags = [t.strip() for t in header.split(",") if t.strip()]
    return any(t == "*" or t == etag or t.removeprefix("W/") == etag for t in tags)


@dataclass
class WebRtcRoutes:
    api: "Api"
    plane: WebRtcPlane
    settings: WebRtcHttpSettings = field(default_factory=WebRtcHttpSettings)

    # -- helpers ------------------------------------------------------------------------------

    def _cors(self, response: web.StreamResponse) -> web.StreamResponse:
        origin = self.settings.cors_allow_origin
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Location, ETag, Link, Accept-Patch, Accept-Post, Retry-After"
        return response

    def _wrap(self, protocol: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                response = await handler(request)
            except WebRtcError as exc:
                response = _error(exc.status, exc.code, exc.message, exc.headers or None)
            except PublishDenied as denied:
                response = self._denied(denied)
            except web.HTTPRequestEntityTooLarge:
                response = _error(413, "body_too_large", "request body too large")
            self.plane.count_request(protocol, request.method, response.status)
            return self._cors(response)

        return wrapped

    @staticmethod
    def _denied(denied: PublishDenied) -> web.Response:
        if denied.status == 401:
            return _error(401, "unauthorized", "missing, invalid or expired token", {"WWW-Authenticate": "Bearer"})
        if denied.status == 503:
            return _error(503, "node_full", denied.reason, {"Retry-After": RETRY_AFTER_S})
        if denied.status == 404:
            return _error(404, "not_found", denied.reason)
        if denied.status >= 500:
            return _error(denied.status, "internal_error", denied.reason)
        return _error(denied.status, "conflict", denied.reason)

    async def _offer(self, request: web.Request, protocol: str) -> tuple[str, str]:
        if request.content_type != SDP:
            raise WebRtcError(415, "unsupported_media_type", f"body must be {SDP}")
        token = _bearer(request)
        if token is None:
            log.warning("%s request refused from %s: no bearer token", protocol.upper(), request.remote)
            raise PublishDenied(401, "no bearer token")
        raw = await request.read()
        try:
            offer = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WebRtcError(400, "invalid_sdp", "SDP offer is not UTF-8") from None
        return token, offer

    @staticmethod
    def _created(answer: PeerAnswer, location: str) -> web.Response:
        response = web.Response(status=201, body=answer.sdp.encode(), content_type=SDP)
        response.headers["Location"] = location
        response.headers["ETag"] = answer.etag
        response.headers["Accept-Patch"] = SDPFRAG
        for link in answer.links:
            response.headers.add("Link", link)
        return response

    # -- endpoints ------------------------------------------------------------------------------

    async def whip_post(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        token, offer = await self._offer(request, "whip")
        answer = await self.plane.publish(session_id, token, offer, str(request.remote))
        return self._created(answer, f"/whip/{session_id}/{answer.resource_id}")

    async def whep_post(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        token, offer = await self._offer(request, "whep")
        answer = await self.plane.play(session_id, token, offer, str(request.remote))
        return self._created(answer, f"/whep/{session_id}/{answer.resource_id}")

    async def options_endpoint(self, request: web.Request) -> web.Response:
        """RFC 9725: Accept-Post; also the browsers' CORS preflight (no token needed)."""
        response = web.Response(status=204)
        response.headers["Accept-Post"] = SDP
        response.headers["Allow"] = "OPTIONS, POST"
        response.headers["Access-Control-Allow-Methods"] = "OPTIONS, POST"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        return response

    def _resource(self, request: web.Request, protocol: str) -> tuple[str, str, str]:
        session_id, resource_id = request.match_info["session_id"], request.match_info["resource_id"]
        etag = self.plane.etag(protocol, session_id, resource_id)
        if etag is None:
            raise WebRtcError(404, "not_found", f"no such {protocol.upper()} session")
        return session_id, resource_id, etag

    def _resource_handlers(self, protocol: str) -> dict[str, Callable[[web.Request], Awaitable[web.Response]]]:
        async def patch(request: web.Request) -> web.Response:
            session_id, resource_id, etag = self._resource(request, protocol)
            if request.content_type != SDPFRAG:
                raise WebRtcError(415, "unsupported_media_type", f"body must be {SDPFRAG}")
            if_match = request.headers.get("If-Match")
            if if_match is None:
                raise WebRtcError(428, "precondition_required", "If-Match with the ETag (or *) is required")
            if not _if_match_ok(if_match, etag):
                raise WebRtcError(412, "precondition_failed", "If-Match does not match the ICE session's ETag")
            raw = await request.read()
            try:
                fragment = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise WebRtcError(400, "invalid_sdpfrag", "fragment is not UTF-8") from None
            await self.plane.trickle(protocol, session_id, resource_id, fragment)
            response = web.Response(status=204)
            response.headers["ETag"] = etag
            return response

        async def delete(request: web.Request) -> web.Response:
            session_id, resource_id = request.match_info["session_id"], request.match_info["resource_id"]
            if not await self.plane.delete(protocol, session_id, resource_id):
                raise WebRtcError(404, "not_found", f"no such {protocol.upper()} session")
            return web.json_response({"deleted": True})

        async def options(request: web.Request) -> web.Response:
            response = web.Response(status=204)
            response.headers["Accept-Patch"] = SDPFRAG
            response.headers["Allow"] = "OPTIONS, PATCH, DELETE"
            response.headers["Access-Control-Allow-Methods"] = "OPTIONS, PATCH, DELETE"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, If-Match"
            return response

        return {"PATCH": patch, "DELETE": delete, "OPTIONS": options}

    # -- play tokens (API key) -------------------------------------------------------------------

    async def issue_play_token(self, request: web.Request) -> web.Response:
        from signaling.app import _Reply

        api = self.api
        try:
            key = api._api_key(request)
            session = await api._owned_session(request, key)
            body: Any = {}
            if request.can_read_body:
                body = await api._json_body(request)
        except _Reply as reply:
            return reply.response
        if not isinstance(body, dict) or set(body) - {"ttl_s"}:
            field_name = "body" if not isinstance(body, dict) else sorted(set(body) - {"ttl_s"})[0]
            return _error_field(400, "body must be a JSON object with optional ttl_s", field_name)
        ttl = body.get("ttl_s", self.settings.play_token_ttl_s)
        limit = self.settings.play_token_max_ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= limit:
            return _error_field(400, f"must be an integer from 1 to {limit}", "ttl_s")
        if session.state is SessionState.ENDED:
            return _error(409, "conflict", "session ended")
        token = api.service.issue_play_token(session, ttl)
        return web.json_response(
            {
                "session_id": session.id,
                "token": token.token,
                "expires_at": token.claims.expires_at,
                "whep_url": f"{api.urls.http_base_url}/whep/{session.id}",
            },
            status=201,
        )


def _error_field(status: int, message: str, field_name: str) -> web.Response:
    from signaling.app import json_error

    return json_error(status, "invalid_field", message, field=field_name)


def add_webrtc_routes(app: web.Application, routes: WebRtcRoutes) -> None:
    app.router.add_post("/v1/sessions/{session_id}/play-tokens", routes.issue_play_token)
    for protocol, post in (("whip", routes.whip_post), ("whep", routes.whep_post)):
        endpoint = app.router.add_resource(f"/{protocol}/{{session_id}}")
        endpoint.add_route("POST", routes._wrap(protocol, post))
        endpoint.add_route("OPTIONS", routes._wrap(protocol, routes.options_endpoint))
        resource = app.router.add_resource(f"/{protocol}/{{session_id}}/{{resource_id}}")
        for method, handler in routes._resource_handlers(protocol).items():
            resource.add_route(method, routes._wrap(protocol, handler))
