"""The node's web page (signaling/web.py): routes, files and security headers, over HTTP.

The page's behaviour in a real browser is tested in tests/browser/test_web_browser.py."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from edge_server.node import Node
from signaling.web import STATIC_FILES, WEB_DIR


def base(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}"


def csp(headers: aiohttp.typedefs.LooseHeaders) -> dict[str, str]:
    policy = headers["Content-Security-Policy"]
    return {part.split()[0]: part.split(" ", 1)[1] if " " in part else "" for part in (p.strip() for p in policy.split(";")) if part}


async def test_studio_page_is_served_with_strict_headers(node: Node) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(base(node) + "/") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            body = await resp.text()
            headers = resp.headers
    assert '<script type="module" src="/static/studio.js">' in body
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    policy = csp(headers)
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "camera=(self)" in headers["Permissions-Policy"]


async def test_embed_page_may_be_framed_anywhere(node: Node) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(base(node) + "/embed/ses_abc?token=not-a-token") as resp:
            assert resp.status == 200
            body = await resp.text()
            headers = resp.headers
        async with http.get(base(node) + "/embed/bad%20id") as bad:
            assert bad.status == 404
    assert "not-a-token" not in body, "the page never echoes the token"
    assert '<script type="module" src="/static/embed.js">' in body
    assert "X-Frame-Options" not in headers
    policy = csp(headers)
    assert policy["frame-ancestors"] == "*"
    assert policy["script-src"] == "'self'"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "camera=()" in headers["Permissions-Policy"]


async def test_static_files_only_from_the_list_with_types_and_etags(node: Node) -> None:
    async with aiohttp.ClientSession() as http:
        for name in STATIC_FILES:
            async with http.get(f"{base(node)}/static/{name}") as resp:
                assert resp.status == 200, name
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                expected = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}[name.rsplit(".", 1)[1]]
                assert resp.content_type == expected
                etag = resp.headers["ETag"]
            async with http.get(f"{base(node)}/static/{name}", headers={"If-None-Match": etag}) as again:
                assert again.status == 304
        for path in ("/static/../app.py", "/static/%2e%2e%2fapp.py", "/static/index.html", "/static/nope.js"):
            async with http.get(base(node) + path) as resp:
                assert resp.status == 404, path


def test_pages_have_no_inline_script_or_style_and_no_external_urls() -> None:
    for path in WEB_DIR.iterdir():
        text = path.read_text()
        if path.suffix == ".html":
            assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"{path.name}: inline script"
            assert "<style" not in text and " style=" not in text, f"{path.name}: inline style (the CSP forbids it)"
            assert not re.search(r"\son[a-z]+=", text), f"{path.name}: inline event handler"
        loads = r"""(src|href)=["']?(https?:)?//|from\s+["'](https?:)?//|import\(["'](https?:)?//|url\(["']?(https?:)?//|fetch\(["'](https?:)?//"""
        assert not re.search(loads, text), f"{path.name}: loads from another site (must work offline, no CDN)"
        if path.suffix == ".js":
            assert "console." not in text, f"{path.name}: logs (tokens must never reach a console)"
            assert "localStorage" not in text, f"{path.name}: the API key stays in sessionStorage"


@pytest.mark.parametrize("name", sorted(p.name for p in WEB_DIR.iterdir()))
def test_every_web_file_is_served(name: str) -> None:
    assert name in STATIC_FILES or name in ("index.html", "embed.html"), f"{name} is in signaling/web but not served"


def test_web_dir_is_packaged_next_to_the_module() -> None:
    assert WEB_DIR == Path(__file__).resolve().parents[2] / "signaling" / "web"
