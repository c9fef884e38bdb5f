"""Who is on the other end of a web request: the client address and user agent for an ``Actor``.

``actor_from_request(request, id=...)`` reads an aiohttp request, an ASGI scope (or a Starlette /
FastAPI request), a WSGI environ (or a Flask / Werkzeug request) or a Django request, without
importing any of those frameworks. Security: ``X-Forwarded-For`` and ``Forwarded`` are set by
whoever sends the request, so they are ignored unless ``trusted_proxies`` says how many proxies
of yours stand in front of the service; then the address is the one the outermost trusted proxy
saw, never a value further left that the client could have chosen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from otaudit_sdk._model import Actor

__all__ = ["actor_from_request", "client_from_request", "RequestClient"]

USER_AGENT_LIMIT = 2048  # the collector's limit for user_agent.original
_HEADERS = ("user-agent", "x-forwarded-for", "forwarded")


@dataclass(frozen=True, slots=True)
class RequestClient:
    """The client's network address (``client.address``) and ``User-Agent`` (``user_agent.original``)."""

    address: str | None
    user_agent: str | None


def client_from_request(request: object, *, trusted_proxies: int = 0) -> RequestClient:
    """The client of ``request``: its peer address, or with ``trusted_proxies`` > 0 the forwarded one."""
    if trusted_proxies < 0:
        raise ValueError("trusted_proxies must be 0 or more")
    peer, headers = _read(request)
    address = _forwarded_for(headers, trusted_proxies) if trusted_proxies else None
    user_agent = _clean(headers["user-agent"][0]) if headers.get("user-agent") else None
    return RequestClient(address or _host(peer), user_agent[:USER_AGENT_LIMIT] if user_agent else None)


def actor_from_request(
    request: object,
    *,
    type: str = "user",
    id: str | None = None,
    email: str | None = None,
    name: str | None = None,
    roles: Iterable[str] = (),
    session_id: str | None = None,
    trusted_proxies: int = 0,
) -> Actor:
    """An ``Actor`` acting from the client of ``request`` (see ``client_from_request``)."""
    if isinstance(roles, str):
        raise TypeError("actor roles must be a sequence of strings, not one string")
    client = client_from_request(request, trusted_proxies=trusted_proxies)
    return Actor(type, id, email, name, tuple(roles), client.address, client.user_agent, session_id)


def _read(request: object) -> tuple[str | None, dict[str, list[str]]]:
    """The peer address and the values of the headers in ``_HEADERS`` (lowercase names)."""
    source: Any = request
    for attr in ("scope", "environ", "META"):  # Starlette/FastAPI, Flask/Werkzeug, Django
        inner = getattr(request, attr, None)
        if isinstance(inner, dict):
            source = inner
            break
    if isinstance(source, dict):
        if source.get("type") in ("http", "websocket"):  # ASGI scope
            client = source.get("client")
            headers: dict[str, list[str]] = {}
            for raw_name, raw_value in source.get("headers") or ():
                name = raw_name.decode("latin-1").lower()
                if name in _HEADERS:
                    headers.setdefault(name, []).append(raw_value.decode("latin-1"))
            return (str(client[0]) if client else None), headers
        if "REMOTE_ADDR" in source or "REQUEST_METHOD" in source:  # WSGI environ, Django META
            keys = {name: "HTTP_" + name.upper().replace("-", "_") for name in _HEADERS}
            return source.get("REMOTE_ADDR"), {name: [source[key]] for name, key in keys.items() if source.get(key)}
    elif all(hasattr(source, attr) for attr in ("remote", "headers", "transport")):  # aiohttp
        return source.remote, {name: list(source.headers.getall(name, ())) for name in _HEADERS}
    kind = f"{type(request).__module__}.{type(request).__qualname__}"
    raise TypeError(
        f"cannot read the client of a {kind}: expected an aiohttp web.Request, an ASGI scope dict or an object "
        "with a .scope dict (Starlette, FastAPI), a WSGI environ dict or an object with an .environ dict "
        "(Flask, Werkzeug), or an object with a .META dict (Django)"
    )


def _forwarded_for(headers: dict[str, list[str]], hops: int) -> str | None:
    """The address ``hops`` entries from the right of X-Forwarded-For (or Forwarded ``for=``)."""
    if headers.get("x-forwarded-for"):
        chain = [_host(part) for value in headers["x-forwarded-for"] for part in value.split(",")]
    elif headers.get("forwarded"):
        chain = [_forwarded_element(part) for value in headers["forwarded"] for part in value.split(",")]
    else:
        return None
    return chain[-hops] if len(chain) >= hops else None


def _forwarded_element(element: str) -> str | None:
    """The ``for=`` node of one RFC 7239 element; None for a missing, ``unknown`` or obfuscated one."""
    for pair in element.split(";"):
        key, _, value = pair.partition("=")
        if key.strip().lower() == "for":
            node = _host(value.strip().strip('"'))
            return None if node is None or node.lower() == "unknown" or node.startswith("_") else node
    return None


def _host(value: str | None) -> str | None:
    """The host of an address (no brackets, no port); None for an empty one or a Unix socket path."""
    value = _clean(value)
    if value is None or "/" in value or value.startswith("\0"):
        return None
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else value[1:]
    elif value.count(":") == 1:  # host:port; a bare IPv6 address has more colons
        value = value.partition(":")[0]
    return _clean(value)


def _clean(value: str | None) -> str | None:
    value = value.strip() if value else None
    return value or None
