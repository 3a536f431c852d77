"""The node's web page: a studio at ``/`` and a bare embeddable player at ``/embed/{session}``.

- ``GET /``                      the studio: API key (kept in the tab's sessionStorage), mode or
                                  persona, camera published over WHIP, the masked result played
                                  back over WHEP side by side, live figures from both peers and
                                  from ``GET /v1/sessions/{id}``.
- ``GET /embed/{session}?token=`` a player for a partner's iframe: WHEP with the play token in
                                  the query string, muted autoplay with click-to-unmute.
- ``GET /static/{name}``          the pages' scripts and stylesheet (a fixed list, no directory walk).

Plain HTML/JS/CSS files in ``signaling/web/``: no build step, no CDN, works offline. Every
script is a file (no inline script or style), so the Content-Security-Policy allows ``'self'``
only. The studio may not be framed (``frame-ancestors 'none'``); the player may be framed by
anyone (``frame-ancestors *``): it is what partners embed, and it holds nothing but the play
token its embedder gave it. ``Referrer-Policy: no-referrer`` keeps the token in the player's
URL from leaking to anyone; the access log drops query strings (``signaling/app.py``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

WEB_DIR = Path(__file__).resolve().parent / "web"

_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
STATIC_FILES = ("studio.js", "embed.js", "rtc.js", "style.css", "embed.css", "favicon.svg")
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

# connect-src 'self': the pages call the API and the WHIP/WHEP endpoints of the node that served them
# (media itself goes over WebRTC, which CSP does not govern). media-src blob: mediastream: for the
# camera preview and the played stream; img-src data: for the favicon fallback, blob: for the
# persona previews (fetched with the API key, which an <img src> could not send).
_CSP_COMMON = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; object-src 'none'"
)
STUDIO_HEADERS = {
    "Content-Security-Policy": _CSP_COMMON + "; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(self), microphone=(self), geolocation=(), payment=()",
    "Cache-Control": "no-store",
}
EMBED_HEADERS = {
    "Content-Security-Policy": _CSP_COMMON + "; frame-ancestors *",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "Cache-Control": "no-store",
}
STATIC_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate with the ETag: a new node version's scripts take effect at once
}


@dataclass(frozen=True)
class _File:
    body: bytes
    content_type: str
    etag: str


def _load(name: str) -> _File:
    path = WEB_DIR / name
    body = path.read_bytes()
    return _File(body, _TYPES[path.suffix], '"' + hashlib.sha256(body).hexdigest()[:20] + '"')


class WebPages:
    """Serves the pages from memory (read once at start: a handful of small files)."""

    def __init__(self) -> None:
        self.studio = _load("index.html")
        self.embed = _load("embed.html")
        self.static = {name: _load(name) for name in STATIC_FILES}

    @staticmethod
    def _reply(request: web.Request, file: _File, headers: dict[str, str]) -> web.Response:
        if request.headers.get("If-None-Match") == file.etag:
            response = web.Response(status=304)
        else:
            response = web.Response(body=file.body, content_type=file.content_type, charset="utf-8")
        response.headers.update(headers)
        response.headers["ETag"] = file.etag
        return response

    async def index(self, request: web.Request) -> web.Response:
        return self._reply(request, self.studio, STUDIO_HEADERS)

    async def embed_page(self, request: web.Request) -> web.Response:
        if not SESSION_ID.match(request.match_info["session_id"]):
            return web.Response(status=404, text="no such session", headers=EMBED_HEADERS)
        return self._reply(request, self.embed, EMBED_HEADERS)

    async def asset(self, request: web.Request) -> web.Response:
        file = self.static.get(request.match_info["name"])
        if file is None:
            return web.Response(status=404, text="not found", headers=STATIC_HEADERS)
        return self._reply(request, file, STATIC_HEADERS)


def add_web_routes(app: web.Application) -> WebPages:
    pages = WebPages()
    app.router.add_get("/", pages.index)
    app.router.add_get("/embed/{session_id}", pages.embed_page)
    app.router.add_get("/static/{name}", pages.asset)
    return pages


__all__ = ["EMBED_HEADERS", "STUDIO_HEADERS", "WebPages", "add_web_routes"]
