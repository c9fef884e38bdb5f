"""The README's backend endpoint that mints a viewer token, run as written inside an aiohttp
app against a real collector: the token it hands the page reads the signed-in person's tenant."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import requests
from aiohttp import web
from support import RunningCollector
from test_api_reads import ROLE, send, token

README = Path(__file__).resolve().parents[1] / "README.md"


def _endpoint_code() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Showing the trail inside your product", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section holds one Python example"
    return blocks[0]


def test_the_readmes_endpoint_mints_a_token_that_reads_the_persons_tenant(collector: RunningCollector) -> None:
    (event_id,) = send(collector.grpc_target, [(ROLE, None)])
    (other,) = send(collector.grpc_target, [({**ROLE, "tenant": "globex"}, None)])
    namespace: dict[str, Any] = {}
    exec(compile(_endpoint_code(), "README.md", "exec"), namespace)  # the README's own example
    namespace["OTAUDIT"] = collector.api_url
    namespace["ADMIN_TOKENS"] = {"acme": token(collector.conninfo, "acme")}

    async def current_user(request: web.Request) -> SimpleNamespace:
        return SimpleNamespace(name="Ann Lee", email="ann@customer.example", tenant="acme")

    namespace["current_user"] = current_user

    async def serve_and_ask() -> dict[str, Any]:
        app = web.Application()
        app.router.add_post("/audit-token", namespace["audit_token"])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            answer = await asyncio.to_thread(requests.post, f"http://127.0.0.1:{port}/audit-token", timeout=30)
            assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store", answer.text
            handed: dict[str, Any] = answer.json()
            return handed
        finally:
            await runner.cleanup()

    handed = asyncio.run(serve_and_ask())
    viewer = {"Authorization": f"Bearer {handed['token']}"}
    me = requests.get(collector.api_url + "/v1/whoami", headers=viewer, timeout=30).json()
    assert me["role"] == "viewer" and me["name"] == "Ann Lee (ann@customer.example)" and me["tenant"] == "acme"
    assert me["viewer"]["categories"] == ["site_access", "accounts_configuration"]
    page = requests.get(collector.api_url + "/v1/events", headers=viewer, timeout=30)
    assert page.status_code == 200 and event_id in page.text and other not in page.text
