"""``GET /openapi.json``: the OpenAPI document of the API port, with no token.

The document is ``api/openapi.json``, written by hand from what the routes answer
(``tests/test_openapi.py`` holds it to the router and runs schemathesis against it). Its
``info.version`` is the collector's version, set here when it is served.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from aiohttp import web

from otaudit_collector import __version__

__all__ = ["add_openapi_route", "openapi_document"]

_BODY: web.AppKey[bytes] = web.AppKey("openapi_body", bytes)


def openapi_document() -> dict[str, Any]:
    """The document as served: the packaged file with ``info.version`` set to the collector's."""
    doc: dict[str, Any] = json.loads(files(__package__).joinpath("openapi.json").read_text(encoding="utf-8"))
    doc["info"]["version"] = __version__
    return doc


def add_openapi_route(app: web.Application) -> None:
    app[_BODY] = json.dumps(openapi_document(), ensure_ascii=False).encode()
    app.router.add_get("/openapi.json", _openapi)


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_BODY], content_type="application/json", charset="utf-8")
