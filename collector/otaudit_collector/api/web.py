"""The admin web page and the embeddable viewer: static files from ``api/web/``, no build
step, no token needed to load them (the admin page asks for the token; the embedded viewer
takes it from its host page by ``postMessage``) and send it to the API routes themselves.

``GET /`` redirects to ``/ui/``; ``/ui/`` is ``index.html``; ``/ui/{file}`` the assets.
Only the files found in the folder at start are served, never a path the client makes
up. Every answer carries a strict Content-Security-Policy (scripts, styles and
connections from this origin only; no inline script, no framing), ``nosniff``, no
referrer, and ``Cache-Control: no-cache`` with an ETag: the browser revalidates each
time and gets a 304 when the collector's files have not changed.

``/ui/embed.html`` is one answer: the stylesheets and the script it names are written into it
at start (the files stay as they are, and are served too), so that the viewer needs no second
round trip before it asks its host for a token. Its CSP admits exactly those inline elements, by
their SHA-256 (``'sha256-...'``; never ``'unsafe-inline'``).

``/ui/embed.html`` alone may be framed, and only by the origins of ``viewer.frame_ancestors``
(every tenant's) and, when its URL names a tenant (``?tenant=acme``), of that tenant's
``viewer.tenant_frame_ancestors``: its ``frame-ancestors`` lists them (``'none'`` when there
are none) and it carries no ``X-Frame-Options``. The same origins are written into the page
(``<meta name="otaudit-frame-origins">``): the viewer takes messages from its parent only
when they come from one of them.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

__all__ = ["EMBED_PAGE", "FrameAncestors", "SECURITY_HEADERS", "add_web_routes", "embed_headers", "origin"]

log = logging.getLogger(__name__)

_FOLDER = Path(__file__).resolve().parent / "web"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def _policy(frame_ancestors: str, scripts: Iterable[str] = (), styles: Iterable[str] = ()) -> str:
    """The Content-Security-Policy: this origin's files only, plus the inline elements whose hashes are given."""
    script_src = " ".join(("'self'", *scripts))
    style_src = " ".join(("'self'", *styles))
    return (
        f"default-src 'self'; script-src {script_src}; style-src {style_src}; img-src 'self'; connect-src 'self';"
        f" object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors {frame_ancestors}"
    )


SECURITY_HEADERS = {
    "Content-Security-Policy": _policy("'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

EMBED_PAGE = "embed.html"
_ORIGINS_META = b'<meta name="otaudit-frame-origins" content="">'
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
_ORIGIN = re.compile(r"(https?)://([A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::([0-9]{1,5}))?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(text: str) -> str:
    """An origin of the configuration (``scheme://host[:port]``, as the schema checks it) as a
    browser writes it in ``event.origin``: lower case, without the scheme's default port."""
    match = _ORIGIN.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an origin (scheme://host[:port], http or https, no path)")
    scheme, host, port = match.group(1).lower(), match.group(2).lower(), match.group(3)
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port is out of range")
    if port is None or int(port) == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{int(port)}"


def _origins(texts: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(origin(t) for t in texts))


@dataclass(frozen=True, slots=True)
class FrameAncestors:
    """Who may frame the embeddable viewer: ``viewer.frame_ancestors`` (always) and
    ``viewer.tenant_frame_ancestors`` (when the page's URL names that tenant)."""

    deployment: tuple[str, ...] = ()
    tenants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, deployment: Iterable[str], tenants: Mapping[str, Iterable[str]]) -> FrameAncestors:
        return cls(_origins(deployment), {tenant: _origins(listed) for tenant, listed in tenants.items()})

    def allowed(self, tenant: str | None) -> tuple[str, ...]:
        """The origins that may frame the viewer whose URL names ``tenant`` (None: names none)."""
        extra = self.tenants.get(tenant, ()) if tenant is not None else ()
        return tuple(dict.fromkeys((*self.deployment, *extra)))


def embed_headers(allowed: tuple[str, ...], scripts: Iterable[str] = (), styles: Iterable[str] = ()) -> dict[str, str]:
    """The security headers of the embeddable viewer framed by ``allowed`` (none: by nobody), whose
    inline scripts and styles have the CSP sources ``scripts`` and ``styles`` (``'sha256-...'``)."""
    headers = {name: value for name, value in SECURITY_HEADERS.items() if name != "X-Frame-Options"}
    headers["Content-Security-Policy"] = _policy(" ".join(allowed) if allowed else "'none'", scripts, styles)
    return headers


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    content_type: str
    etag: str
    scripts: tuple[str, ...] = ()  # the CSP sources of its inline scripts and styles ('sha256-...')
    styles: tuple[str, ...] = ()


_FILES: web.AppKey[dict[str, _File]] = web.AppKey("web_files", dict)
_FRAMERS: web.AppKey[FrameAncestors] = web.AppKey("web_frame_ancestors", FrameAncestors)


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _load(folder: Path) -> dict[str, _File]:
    files: dict[str, _File] = {}
    if not folder.is_dir():  # an installation without its package data: the API works, the page says 404
        log.warning("the web page's files are missing from %s; / and /ui/ answer 404", folder)
        return files
    for path in sorted(folder.iterdir()):
        content_type = _TYPES.get(path.suffix)
        if path.is_file() and content_type is not None:
            body = path.read_bytes()
            files[path.name] = _File(body, content_type, _etag(body))
    if EMBED_PAGE in files:
        files[EMBED_PAGE] = _inline(files[EMBED_PAGE], files)
    return files


# What embed.html names exactly so (its stylesheets, its script) is written into it.
_LINKED = re.compile(rb'<link rel="stylesheet" href="([a-z0-9-]+\.css)">|<script src="([a-z0-9-]+\.js)" defer></script>')
# Text that would end (or confuse) the element it is written into: such a file stays linked.
_UNSAFE_INLINE = re.compile(rb"</(?:style|script)|<!--|<script", re.IGNORECASE)


def _inline(page: _File, files: Mapping[str, _File]) -> _File:
    """The page with the stylesheets and scripts it links from this folder written into it, and their CSP sources."""
    scripts: list[str] = []
    styles: list[str] = []

    def element(match: re.Match[bytes]) -> bytes:
        name = (match.group(1) or match.group(2)).decode()
        found = files.get(name)
        if found is None or _UNSAFE_INLINE.search(found.body):
            log.warning("%s is not written into %s: it stays linked", name, EMBED_PAGE)
            return match.group(0)
        source = "'sha256-" + base64.b64encode(hashlib.sha256(found.body).digest()).decode() + "'"
        if match.group(1):
            styles.append(source)
            return b"<style>" + found.body + b"</style>"
        scripts.append(source)  # no longer deferred: it runs in the head, and waits for the page itself
        return b"<script>" + found.body + b"</script>"

    body = _LINKED.sub(element, page.body)
    return _File(body, page.content_type, _etag(body), tuple(dict.fromkeys(scripts)), tuple(dict.fromkeys(styles)))


def add_web_routes(app: web.Application, frame_ancestors: FrameAncestors | None = None) -> None:
    """Serve the pages; reads their files once, at start. ``frame_ancestors``: who may frame
    the embeddable viewer (None: nobody)."""
    app[_FILES] = _load(_FOLDER)
    app[_FRAMERS] = frame_ancestors or FrameAncestors()
    app.router.add_get("/", _root)
    app.router.add_get("/ui/", _index)
    app.router.add_get("/ui/{file}", _asset)


async def _root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/", headers=SECURITY_HEADERS)


async def _index(request: web.Request) -> web.Response:
    return _serve(request, "index.html")


async def _asset(request: web.Request) -> web.Response:
    return _serve(request, request.match_info["file"])


def _embed(request: web.Request, page: _File) -> tuple[_File, dict[str, str]]:
    """The viewer page for this request's ``tenant``: its frame-ancestors, and the same origins in the page."""
    tenant = request.query.get("tenant")
    allowed = request.app[_FRAMERS].allowed(tenant if tenant is not None and _TENANT.fullmatch(tenant) else None)
    listed = html.escape(" ".join(allowed), quote=True).encode()
    body = page.body.replace(_ORIGINS_META, _ORIGINS_META.replace(b'content=""', b'content="' + listed + b'"'), 1)
    served = _File(body, page.content_type, _etag(body), page.scripts, page.styles)
    return served, embed_headers(allowed, page.scripts, page.styles)


def _serve(request: web.Request, name: str) -> web.Response:
    found = request.app[_FILES].get(name)
    if found is None:
        return web.Response(status=404, text="not found\n", headers=SECURITY_HEADERS)
    security = SECURITY_HEADERS
    if name == EMBED_PAGE:
        found, security = _embed(request, found)
    headers = {**security, "Cache-Control": "no-cache", "ETag": found.etag}
    if found.etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}:
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.body, headers={**headers, "Content-Type": found.content_type})
