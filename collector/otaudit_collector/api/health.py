"""``/healthz`` (the process is alive), ``/readyz`` (it can make events durable) and
``/metrics`` (the collector's metrics, Prometheus text format). None of them needs a token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from otaudit_collector.metrics import CONTENT_TYPE

__all__ = ["add_readiness_details", "create_api_app", "Readiness", "ReadinessDetails", "RenderMetrics"]

Readiness = Callable[[], list[str]]
"""Returns what keeps the collector from being ready; empty when it is ready."""

RenderMetrics = Callable[[], Awaitable[bytes]]
"""Returns the metrics exposition (``Metrics.render``, added up over the workers of ``--workers``)."""

ReadinessDetails = Callable[[], dict[str, Any]]
"""Returns fields ``/readyz`` adds to its answer, ready or not (the read replica's, storage/replica.py)."""

_READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
_DETAILS: web.AppKey[ReadinessDetails] = web.AppKey("readiness_details")
_METRICS: web.AppKey[RenderMetrics] = web.AppKey("render_metrics")


def create_api_app(readiness: Readiness, metrics: RenderMetrics) -> web.Application:
    app = web.Application()
    app[_READINESS] = readiness
    app[_METRICS] = metrics
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


def add_readiness_details(app: web.Application, details: ReadinessDetails) -> None:
    """Have ``/readyz`` add ``details()`` to its answer: what is degraded without making it not ready."""
    app[_DETAILS] = details


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    problems = request.app[_READINESS]()
    details = request.app.get(_DETAILS)
    extra = details() if details is not None else {}
    if problems:
        return web.json_response({"status": "not ready", "problems": problems, **extra}, status=503)
    return web.json_response({"status": "ready", **extra})


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=await request.app[_METRICS](), headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})
