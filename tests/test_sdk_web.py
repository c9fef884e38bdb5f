"""otaudit_sdk.web: the client of a real aiohttp / WSGI request, an ASGI scope, and framework-shaped wrappers."""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from otaudit_sdk import Actor
from otaudit_sdk.web import RequestClient, actor_from_request, client_from_request

LONG_AGENT = "Mozilla/5.0 " + "x" * 5000


def _fields(actor: Actor) -> dict[str, Any]:
    return {"type": actor.type, "id": actor.id, "address": actor.address, "user_agent": actor.user_agent}


# --- aiohttp: a real app on a free port, hit by a real client ------------------------------------


async def _whoami(request: web.Request) -> web.Response:
    actor = actor_from_request(request, id="u-1", trusted_proxies=int(request.query.get("trusted", "0")))
    return web.json_response(_fields(actor))


def _app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", _whoami)
    return app


@pytest.fixture
async def aio() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(_app(), host="127.0.0.1", port=0)) as client:
        yield client


async def _ask(client: TestClient[web.Request, web.Application], trusted: int = 0, **kwargs: Any) -> dict[str, Any]:
    response = await client.get("/", params={"trusted": str(trusted)}, **kwargs)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def test_aiohttp_peer_address_and_user_agent(aio: TestClient[web.Request, web.Application]) -> None:
    body = await _ask(aio, headers={"User-Agent": "audit-test/1.0"})
    assert body == {"type": "user", "id": "u-1", "address": "127.0.0.1", "user_agent": "audit-test/1.0"}


async def test_aiohttp_spoofed_forwarded_for_is_ignored_by_default(aio: TestClient[web.Request, web.Application]) -> None:
    body = await _ask(aio, headers={"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.7"})
    assert body["address"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [(0, "127.0.0.1"), (1, "10.0.0.2"), (2, "203.0.113.7"), (3, "127.0.0.1")],
    ids=["untrusted", "one-proxy-right-most", "two-proxies", "list-shorter-than-trusted-falls-back-to-peer"],
)
async def test_aiohttp_trusted_proxies_pick_the_hop(
    aio: TestClient[web.Request, web.Application], trusted: int, expected: str
) -> None:
    body = await _ask(aio, trusted, headers={"X-Forwarded-For": "203.0.113.7, 10.0.0.2"})
    assert body["address"] == expected


async def test_aiohttp_repeated_forwarded_for_headers_form_one_list(aio: TestClient[web.Request, web.Application]) -> None:
    headers = CIMultiDict([("X-Forwarded-For", "6.6.6.6, 203.0.113.7"), ("X-Forwarded-For", "10.0.0.2")])
    assert (await _ask(aio, 2, headers=headers))["address"] == "203.0.113.7"


async def test_aiohttp_forwarded_header_with_quoted_ipv6_and_port(aio: TestClient[web.Request, web.Application]) -> None:
    headers = {"Forwarded": 'for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.2;by=10.0.0.1'}
    assert (await _ask(aio, 2, headers=headers))["address"] == "2001:db8:cafe::17"
    assert (await _ask(aio, 1, headers=headers))["address"] == "10.0.0.2"


async def test_aiohttp_missing_user_agent_is_none(aio: TestClient[web.Request, web.Application]) -> None:
    body = await _ask(aio, skip_auto_headers=["User-Agent"])
    assert body["user_agent"] is None
    assert body["address"] == "127.0.0.1"


async def test_aiohttp_long_user_agent_is_truncated(aio: TestClient[web.Request, web.Application]) -> None:
    body = await _ask(aio, headers={"User-Agent": LONG_AGENT})
    assert body["user_agent"] == LONG_AGENT[:2048]


async def test_aiohttp_unix_socket_peer_has_no_address() -> None:
    folder = tempfile.mkdtemp(prefix="otaudit-web-")  # short: AF_UNIX paths are limited to ~107 bytes
    path = str(Path(folder) / "app.sock")
    runner = web.AppRunner(_app())
    await runner.setup()
    try:
        await web.UnixSite(runner, path).start()
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session,
            session.get("http://localhost/", params={"trusted": "0"}, headers={"User-Agent": "ua"}) as response,
        ):
            body = await response.json()
    finally:
        await runner.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    assert body == {"type": "user", "id": "u-1", "address": None, "user_agent": "ua"}


# --- WSGI: a real wsgiref server in a thread -----------------------------------------------------


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    trusted = int(parse_qs(environ.get("QUERY_STRING", "")).get("trusted", ["0"])[0])
    body = json.dumps(_fields(actor_from_request(environ, id="u-1", trusted_proxies=trusted))).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def wsgi_port() -> Iterator[int]:
    server: WSGIServer = make_server("127.0.0.1", 0, _wsgi_app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _wsgi_ask(port: int, trusted: int = 0, headers: dict[str, str] | None = None) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", f"/?trusted={trusted}", headers=headers or {})  # http.client sends no User-Agent
        response = connection.getresponse()
        assert response.status == 200
        body: dict[str, Any] = json.loads(response.read())
        return body
    finally:
        connection.close()


def test_wsgi_peer_address_and_user_agent(wsgi_port: int) -> None:
    body = _wsgi_ask(wsgi_port, headers={"User-Agent": "curl/8.5.0"})
    assert body == {"type": "user", "id": "u-1", "address": "127.0.0.1", "user_agent": "curl/8.5.0"}


def test_wsgi_spoofed_forwarded_for_is_ignored_by_default(wsgi_port: int) -> None:
    assert _wsgi_ask(wsgi_port, headers={"X-Forwarded-For": "6.6.6.6"})["address"] == "127.0.0.1"


@pytest.mark.parametrize(("trusted", "expected"), [(1, "10.0.0.2"), (2, "203.0.113.7"), (3, "127.0.0.1")])
def test_wsgi_trusted_proxies_pick_the_hop(wsgi_port: int, trusted: int, expected: str) -> None:
    headers = {"X-Forwarded-For": " 203.0.113.7 ,10.0.0.2 "}
    assert _wsgi_ask(wsgi_port, trusted, headers)["address"] == expected


def test_wsgi_forwarded_header_used_when_no_x_forwarded_for(wsgi_port: int) -> None:
    headers = {"Forwarded": 'for="[2001:db8::9]";proto=https'}
    assert _wsgi_ask(wsgi_port, 1, headers)["address"] == "2001:db8::9"


def test_wsgi_missing_and_long_user_agent(wsgi_port: int) -> None:
    assert _wsgi_ask(wsgi_port)["user_agent"] is None
    assert _wsgi_ask(wsgi_port, headers={"User-Agent": LONG_AGENT})["user_agent"] == LONG_AGENT[:2048]


# --- ASGI scopes and framework-shaped wrappers ---------------------------------------------------


def _scope(client: tuple[str, int] | None, headers: list[tuple[bytes, bytes]], type: str = "http") -> dict[str, Any]:
    """A scope as an ASGI server (uvicorn, hypercorn) passes it to the application."""
    return {
        "type": type,
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/accounts",
        "raw_path": b"/accounts",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": client,
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


class StarletteLikeRequest:
    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope


class FlaskLikeRequest:
    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ


class DjangoLikeRequest:
    def __init__(self, meta: dict[str, Any]) -> None:
        self.META = meta


ASGI_HEADERS = [
    (b"host", b"accounts.acme.test"),
    (b"user-agent", b"Caf\xe9Browser/2.0"),  # latin-1, as ASGI specifies
    (b"x-forwarded-for", b"6.6.6.6, 198.51.100.4"),
]


def test_asgi_scope_peer_and_latin1_user_agent() -> None:
    scope = _scope(("192.0.2.10", 51234), ASGI_HEADERS)
    assert client_from_request(scope) == RequestClient("192.0.2.10", "CaféBrowser/2.0")
    assert client_from_request(scope, trusted_proxies=1) == RequestClient("198.51.100.4", "CaféBrowser/2.0")
    assert client_from_request(scope, trusted_proxies=3).address == "192.0.2.10"


def test_asgi_unix_socket_client_none_has_no_address() -> None:
    scope = _scope(None, [(b"user-agent", b"ua")])
    assert client_from_request(scope, trusted_proxies=1) == RequestClient(None, "ua")


def test_asgi_websocket_scope_and_scope_wrapper() -> None:
    scope = _scope(("192.0.2.10", 51234), ASGI_HEADERS, type="websocket")
    actor = actor_from_request(StarletteLikeRequest(scope), email="ann@acme.test", trusted_proxies=2)
    assert (actor.email, actor.address, actor.user_agent) == ("ann@acme.test", "6.6.6.6", "CaféBrowser/2.0")


def test_django_meta_and_flask_environ_wrappers() -> None:
    meta = {"REQUEST_METHOD": "POST", "REMOTE_ADDR": "10.1.2.3", "HTTP_X_FORWARDED_FOR": "203.0.113.9", "HTTP_USER_AGENT": "dj"}
    assert client_from_request(DjangoLikeRequest(meta)) == RequestClient("10.1.2.3", "dj")
    assert client_from_request(DjangoLikeRequest(meta), trusted_proxies=1) == RequestClient("203.0.113.9", "dj")
    # gunicorn on a Unix socket leaves REMOTE_ADDR empty; whitespace-only headers count as absent
    environ = {"REQUEST_METHOD": "GET", "REMOTE_ADDR": "", "HTTP_USER_AGENT": "   "}
    assert client_from_request(FlaskLikeRequest(environ)) == RequestClient(None, None)


@pytest.mark.parametrize(
    ("headers", "trusted", "expected"),
    [
        ({"HTTP_FORWARDED": "for=192.0.2.60;proto=http;by=203.0.113.43"}, 1, "192.0.2.60"),
        ({"HTTP_FORWARDED": 'For="192.0.2.43:8080", for=198.51.100.17'}, 2, "192.0.2.43"),
        ({"HTTP_FORWARDED": 'for="[2001:db8:cafe::17]:4711"'}, 1, "2001:db8:cafe::17"),
        ({"HTTP_FORWARDED": "for=unknown"}, 1, "10.0.0.1"),
        ({"HTTP_FORWARDED": "for=_hidden, for=198.51.100.17"}, 2, "10.0.0.1"),
        ({"HTTP_FORWARDED": "proto=https;by=10.0.0.1"}, 1, "10.0.0.1"),
        ({"HTTP_X_FORWARDED_FOR": "198.51.100.1", "HTTP_FORWARDED": "for=6.6.6.6"}, 1, "198.51.100.1"),
        ({"HTTP_X_FORWARDED_FOR": "2001:db8::1"}, 1, "2001:db8::1"),
        ({"HTTP_X_FORWARDED_FOR": "[2001:db8::1]:443"}, 1, "2001:db8::1"),
        ({"HTTP_X_FORWARDED_FOR": "198.51.100.1:5555"}, 1, "198.51.100.1"),
        ({"HTTP_X_FORWARDED_FOR": "198.51.100.1, "}, 1, "10.0.0.1"),
    ],
    ids=[
        "forwarded-with-proto-and-by",
        "forwarded-quoted-ipv4-port-two-hops",
        "forwarded-quoted-ipv6-port",
        "forwarded-unknown-falls-back",
        "forwarded-obfuscated-falls-back",
        "forwarded-without-for-falls-back",
        "x-forwarded-for-wins-over-forwarded",
        "xff-bare-ipv6",
        "xff-bracketed-ipv6-port",
        "xff-ipv4-port",
        "xff-empty-trusted-entry-falls-back",
    ],
)
def test_forwarded_values(headers: dict[str, str], trusted: int, expected: str) -> None:
    environ = {"REQUEST_METHOD": "GET", "REMOTE_ADDR": "10.0.0.1", **headers}
    assert client_from_request(environ, trusted_proxies=trusted).address == expected


def test_actor_fields_are_carried() -> None:
    environ = {"REQUEST_METHOD": "GET", "REMOTE_ADDR": "10.0.0.1", "HTTP_USER_AGENT": "ua"}
    actor = actor_from_request(
        environ, id="u-7", email="bo@acme.test", name="Bo", roles=(r for r in ["admin", "auditor"]), session_id="s-1"
    )
    assert actor == Actor("user", "u-7", "bo@acme.test", "Bo", ("admin", "auditor"), "10.0.0.1", "ua", "s-1")
    service = actor_from_request(environ, type="service", name="billing")
    assert (service.type, service.name, service.id, service.address) == ("service", "billing", None, "10.0.0.1")


@pytest.mark.parametrize(
    ("request_", "named"),
    [("GET /", "builtins.str"), (object(), "builtins.object"), ({"type": "lifespan"}, "builtins.dict"), ({}, "builtins.dict")],
)
def test_unsupported_request_raises_type_error_naming_it(request_: object, named: str) -> None:
    with pytest.raises(TypeError, match=rf"{named}.*aiohttp.*ASGI.*WSGI.*Django"):
        client_from_request(request_)


def test_user_actor_without_id_or_email_is_rejected() -> None:
    environ = {"REQUEST_METHOD": "GET", "REMOTE_ADDR": "10.0.0.1"}
    with pytest.raises(ValueError, match="needs an id or an email"):
        actor_from_request(environ)


def test_bad_arguments_are_rejected() -> None:
    environ = {"REQUEST_METHOD": "GET", "REMOTE_ADDR": "10.0.0.1"}
    with pytest.raises(ValueError, match="trusted_proxies"):
        client_from_request(environ, trusted_proxies=-1)
    with pytest.raises(TypeError, match="roles"):
        actor_from_request(environ, id="u-1", roles="admin")
