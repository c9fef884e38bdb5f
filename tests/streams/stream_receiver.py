"""A real webhook receiver for the stream tests: an aiohttp server on port 0, in a thread of its
own, that checks each delivery's signature (core/webhook_signature.verify) and keeps what arrived.

``status`` decides the answer: 200 takes the batch; anything else refuses it (what a receiver
that is down or overloaded answers), and the batch is noted as refused, not kept."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from otaudit_collector.core.webhook_signature import HEADER, secret_bytes, verify


@dataclass
class Receiver:
    secret: str | None = None
    status: int = 200
    body: str = ""
    retry_after: str | None = None
    batches: list[list[dict[str, Any]]] = field(default_factory=list)  # taken, in arrival order
    refused: list[list[dict[str, Any]]] = field(default_factory=list)
    bad_signatures: int = 0
    formats: list[str | None] = field(default_factory=list)  # each taken batch's Otaudit-Format header
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="receiver")
        self.thread.start()
        self.runner: web.AppRunner | None = None
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_post("/hook", self._take)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port: int = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return port

    async def _take(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.secret is not None:
            try:
                verify(secret_bytes(self.secret), request.headers.get(HEADER), body, now=time.time())
            except ValueError:
                with self.lock:
                    self.bad_signatures += 1
                return web.Response(status=401, text="bad signature")
        records = [json.loads(line) for line in body.decode().splitlines()]
        with self.lock:
            if self.status != 200:
                self.refused.append(records)
                headers = {"Retry-After": self.retry_after} if self.retry_after else None
                return web.Response(status=self.status, text=self.body or "down for maintenance", headers=headers)
            self.batches.append(records)
            self.formats.append(request.headers.get("Otaudit-Format"))
        return web.Response(status=200)

    def records(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for batch in self.batches for r in batch]

    def seqs(self) -> list[int]:
        return [r["seq"] for r in self.records()]

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
