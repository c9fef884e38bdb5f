"""``/healthz`` (the process is alive) and ``/readyz`` (it can make events durable)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

__all__ = ["create_api_app", "Readiness"]

Readiness = Callable[[], list[str]]
"""Returns what keeps the collector from being ready; empty when it is ready."""

_READINESS: web.AppKey[Readiness] = web.AppKey("readiness")


def create_api_app(readiness: Readiness) -> web.Application:
    app = web.Application()
    app[_READINESS] = readiness
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    problems = request.app[_READINESS]()
    if problems:
        return web.json_response({"status": "not ready", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})
