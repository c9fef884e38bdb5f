"""The admin web page: static files from ``api/web/``, no build step, no token needed to
load them (the page asks for the token and sends it to the API routes itself).

``GET /`` redirects to ``/ui/``; ``/ui/`` is ``index.html``; ``/ui/{file}`` the assets.
Only the files found in the folder at start are served, never a path the client makes
up. Every answer carries a strict Content-Security-Policy (scripts, styles and
connections from this origin only; no inline script, no framing), ``nosniff``, no
referrer, and ``Cache-Control: no-cache`` with an ETag: the browser revalidates each
time and gets a 304 when the collector's files have not changed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

__all__ = ["add_web_routes", "SECURITY_HEADERS"]

log = logging.getLogger(__name__)

_FOLDER = Path(__file__).resolve().parent / "web"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
        " object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    content_type: str
    etag: str


_FILES: web.AppKey[dict[str, _File]] = web.AppKey("web_files", dict)


def _load(folder: Path) -> dict[str, _File]:
    files: dict[str, _File] = {}
    if not folder.is_dir():  # an installation without its package data: the API works, the page says 404
        log.warning("the web page's files are missing from %s; / and /ui/ answer 404", folder)
        return files
    for path in sorted(folder.iterdir()):
        content_type = _TYPES.get(path.suffix)
        if path.is_file() and content_type is not None:
            body = path.read_bytes()
            files[path.name] = _File(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return files


def add_web_routes(app: web.Application) -> None:
    """Serve the page; reads its files once, at start."""
    app[_FILES] = _load(_FOLDER)
    app.router.add_get("/", _root)
    app.router.add_get("/ui/", _index)
    app.router.add_get("/ui/{file}", _asset)


async def _root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/", headers=SECURITY_HEADERS)


async def _index(request: web.Request) -> web.Response:
    return _serve(request, "index.html")


async def _asset(request: web.Request) -> web.Response:
    return _serve(request, request.match_info["file"])


def _serve(request: web.Request, name: str) -> web.Response:
    found = request.app[_FILES].get(name)
    if found is None:
        return web.Response(status=404, text="not found\n", headers=SECURITY_HEADERS)
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": found.etag}
    if found.etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}:
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.body, headers={**headers, "Content-Type": found.content_type})
