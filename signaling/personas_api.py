"""The personas HTTP API: upload a face image or make a procedural face, list, preview, delete.

| call | what it does | status codes |
|---|---|---|
| ``POST /v1/personas`` | an image (``multipart/form-data`` with an ``image`` part and optional ``name``, or a raw ``image/jpeg|png|webp`` body with ``?name=``), or ``application/json`` ``{"seed", "style", "name"}`` | 201 + ``Location``; 400 (with ``field``), 401, 413, 415, 422 (no face, several faces, ...) |
| ``GET /v1/personas`` | your personas, then the builtins, and the procedural ``styles`` | 200, 401 |
| ``GET /v1/personas/{id}`` | one persona | 200, 401, 404 |
| ``GET /v1/personas/{id}/texture.png`` | its face texture | 200, 401, 404 |
| ``DELETE /v1/personas/{id}`` | remove it | 204, 401, 403 (builtin), 404 |

Auth and errors are the session API's (``signaling/app.py``): a key sees only its own
personas and the builtins. The image limit (8 MB) is larger than the node's generic body
limit, so image bodies are read here, chunk by chunk, against their own limit.
Decoding and the face models run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from aiohttp import BodyPartReader, web

from pipeline.persona_store import MAX_IMAGE_BYTES, PersonaError, PersonaStore
from signaling.app import Api, _Reply, json_error

log = logging.getLogger(__name__)

T = TypeVar("T")

RAW_IMAGE_TYPES = ("image/jpeg", "image/jpg", "image/png", "image/webp")
FORM_OVERHEAD = 64 << 10  # multipart boundaries and headers on top of the image
MAX_FORM_TEXT = 1024
JSON_FIELDS = ("seed", "style", "name")

_STATUS = {"unsupported_type": 415, "too_large": 413, "invalid_name": 400, "invalid_seed": 400, "invalid_style": 400}


class PersonasApi:
    def __init__(self, api: Api, store: PersonaStore, *, max_image_bytes: int = MAX_IMAGE_BYTES) -> None:
        self.api = api
        self.store = store
        self.max_image_bytes = max_image_bytes
        # one worker: the face models run one image at a time anyway, and uploads must not
        # take the cores the live streams need
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="personas")

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- create -----------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        key = self.api._api_key(request)
        ctype = request.content_type
        try:
            if ctype == "application/json":
                body = await self.api._json_body(request)
                seed, style, name = self._procedural_fields(body)
                persona = await self._run(self.store.create_procedural, seed, style, name=name, owner=key.id)
            elif ctype == "multipart/form-data":
                data, name = await self._read_form(request)
                persona = await self._run(self.store.create_from_image, data, name=name, owner=key.id)
            elif ctype in RAW_IMAGE_TYPES:
                self._check_length(request, self.max_image_bytes)
                data = await self._read_limited(request.content, self.max_image_bytes)
                persona = await self._run(self.store.create_from_image, data, name=request.query.get("name"), owner=key.id)
            else:
                return json_error(
                    415,
                    "unsupported_media_type",
                    "send an image (multipart/form-data, image/jpeg, image/png or image/webp) or application/json {seed, style, name}",
                )
        except PersonaError as exc:
            return self._persona_error(exc)
        record = self.store.record(persona.id, key.id)
        assert record is not None
        return web.json_response(self._body(record), status=201, headers={"Location": f"/v1/personas/{persona.id}"})

    def _procedural_fields(self, body: Any) -> tuple[int, str, str | None]:
        from pipeline.procedural import STYLES

        if not isinstance(body, dict):
            raise _Reply(json_error(400, "invalid_field", "must be a JSON object", field="body"))
        unknown = sorted(set(body) - set(JSON_FIELDS))
        if unknown:
            raise _Reply(json_error(400, "invalid_field", f"unknown field (allowed: {', '.join(JSON_FIELDS)})", field=unknown[0]))
        seed = body.get("seed")
        if seed is None:
            seed = secrets.randbits(31)  # returned in the answer, so the face can be made again
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise _Reply(json_error(400, "invalid_field", "must be an integer from 0 to 2**63-1", field="seed"))
        style = body.get("style", STYLES[0])
        if style not in STYLES:
            raise _Reply(json_error(400, "invalid_field", f"must be one of {', '.join(STYLES)}", field="style"))
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise _Reply(json_error(400, "invalid_field", "must be a string", field="name"))
        return seed, style, name

    def _check_length(self, request: web.Request, limit: int) -> None:
        if request.content_length is not None and request.content_length > limit:
            raise _Reply(self._too_large())

    def _too_large(self) -> web.Response:
        return json_error(413, "body_too_large", f"image too large: at most {self.max_image_bytes} bytes ({self.max_image_bytes >> 20} MB)")

    async def _read_limited(self, stream: Any, limit: int) -> bytes:
        buf = bytearray()
        while True:
            chunk = await stream.readany()
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > limit:
                raise _Reply(self._too_large())

    async def _read_form(self, request: web.Request) -> tuple[bytes, str | None]:
        self._check_length(request, self.max_image_bytes + FORM_OVERHEAD)
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError) as exc:
            raise _Reply(json_error(400, "invalid_body", f"bad multipart body: {exc}", field="body")) from None
        data: bytes | None = None
        name: str | None = None
        while True:
            try:
                part = await reader.next()
            except ValueError as exc:
                raise _Reply(json_error(400, "invalid_body", f"bad multipart body: {exc}", field="body")) from None
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise _Reply(json_error(400, "invalid_field", "nested multipart is not supported", field="body"))
            if part.name in ("image", "file"):
                if data is not None:
                    raise _Reply(json_error(400, "invalid_field", "send one image per persona", field=part.name))
                data = await self._read_part(part, self.max_image_bytes)
            elif part.name == "name":
                raw = await self._read_part(part, MAX_FORM_TEXT, text=True)
                try:
                    name = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Reply(json_error(400, "invalid_field", "must be UTF-8 text", field="name")) from None
            else:
                raise _Reply(json_error(400, "invalid_field", "unknown form field (allowed: image, name)", field=str(part.name)))
        if data is None:
            raise _Reply(json_error(400, "invalid_field", "is required: the face image as a form part named 'image'", field="image"))
        return data, name

    async def _read_part(self, part: BodyPartReader, limit: int, text: bool = False) -> bytes:
        buf = bytearray()
        while True:
            chunk = await part.read_chunk(65536)
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > limit:
                if text:
                    raise _Reply(json_error(400, "invalid_field", f"at most {limit} bytes", field=str(part.name)))
                raise _Reply(self._too_large())

    def _persona_error(self, exc: PersonaError) -> web.Response:
        status = _STATUS.get(exc.reason, 422)
        if status == 400:
            return json_error(400, "invalid_field", exc.message, field=exc.field)
        if status == 413:
            return json_error(413, "body_too_large", exc.message)
        if status == 415:
            return json_error(415, "unsupported_media_type", exc.message)
        return json_error(422, exc.reason, exc.message, field="image")

    # -- read and delete --------------------------------------------------------------------

    @staticmethod
    def _body(record: Any) -> dict[str, Any]:
        body = record.public()
        body["texture_url"] = f"/v1/personas/{record.id}/texture.png"
        return body

    async def list(self, request: web.Request) -> web.Response:
        key = self.api._api_key(request)
        from pipeline.procedural import STYLES

        records = await self._run(self.store.list, key.id)
        # the styles a procedural persona may have, so a client need not hard-code them
        return web.json_response({"personas": [self._body(r) for r in records], "styles": list(STYLES)})

    async def get(self, request: web.Request) -> web.Response:
        key = self.api._api_key(request)
        record = await self._run(self.store.record, request.match_info["persona_id"], key.id)
        if record is None:
            return json_error(404, "not_found", "no such persona")
        return web.json_response(self._body(record))

    async def texture(self, request: web.Request) -> web.Response:
        key = self.api._api_key(request)
        png = await self._run(self.store.texture_png, request.match_info["persona_id"], key.id)
        if png is None:
            return json_error(404, "not_found", "no such persona")
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    async def delete(self, request: web.Request) -> web.Response:
        key = self.api._api_key(request)
        persona_id = request.match_info["persona_id"]
        try:
            deleted = await self._run(self.store.delete, persona_id, key.id)
        except PersonaError as exc:
            if exc.reason == "builtin":
                return json_error(403, "builtin_persona", exc.message)
            raise
        if not deleted:
            return json_error(404, "not_found", "no such persona")
        return web.Response(status=204)

    # -- sessions ---------------------------------------------------------------------------

    async def check_session_persona(self, owner: str, fields: dict[str, Any]) -> None:
        """Session create/update hook: a persona named by a session must exist for its key."""
        persona_id = fields.get("persona")
        if persona_id is None:
            return
        if not await self._run(self.store.exists, persona_id, owner):
            raise _Reply(
                json_error(
                    400,
                    "unknown_persona",
                    f"no persona {persona_id!r} for this API key; create one with POST /v1/personas or pick a builtin from GET /v1/personas",
                    field="persona",
                )
            )


def add_persona_routes(app: web.Application, api: Api, store: PersonaStore) -> PersonasApi:
    """Register the /v1/personas routes and the session hook that checks persona ids."""
    personas = PersonasApi(api, store)
    app.router.add_post("/v1/personas", personas.create)
    app.router.add_get("/v1/personas", personas.list)
    app.router.add_get("/v1/personas/{persona_id}", personas.get)
    app.router.add_get("/v1/personas/{persona_id}/texture.png", personas.texture)
    app.router.add_delete("/v1/personas/{persona_id}", personas.delete)
    api.persona_check = personas.check_session_persona

    async def _close(_app: web.Application) -> None:
        personas.close()

    app.on_cleanup.append(_close)
    return personas


__all__ = ["PersonasApi", "add_persona_routes"]
