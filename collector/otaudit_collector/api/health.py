"""``/healthz`` (the process is alive), ``/readyz`` (it can make events durable) and
``/metrics`` (the collector's metrics, Prometheus text format). None of them needs a token."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from otaudit_collector.metrics import CONTENT_TYPE

__all__ = ["create_api_app", "Readiness", "RenderMetrics"]

Readiness = Callable[[], list[str]]
"""Returns what keeps the collector from being ready; empty when it is ready."""

RenderMetrics = Callable[[], bytes]
"""Returns the metrics exposition (``Metrics.render``)."""

_READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
_METRICS: web.AppKey[RenderMetrics] = web.AppKey("render_metrics")


def create_api_app(readiness: Readiness, metrics: RenderMetrics) -> web.Application:
    app = web.Application()
    app[_READINESS] = readiness
    app[_METRICS] = metrics
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    problems = request.app[_READINESS]()
    if problems:
        return web.json_response({"status": "not ready", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_METRICS](), headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})
