"""The webhook transport against a real aiohttp receiver on a free port, in the test's loop.

The receiver checks each request as a customer's would: the signature with ``verify``, a
(t, v1) pair seen before refused as a replay (409). It records what it accepted, and answers
what a test planned (a 500, a 429, a redirect) before going back to 200.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import format_datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from tls_files import certificates

from otaudit_collector.core.webhook_signature import SignatureError, verify
from otaudit_collector.streams.transport import Batch, DeliveryFailed, Record
from otaudit_collector.streams.webhook import WebhookTransport, plain_excerpt, retry_after_seconds

SECRET = b"whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk"
T0 = 1_767_225_600.0


class Clock:
    """The time both sides read: moved by the tests, never by the wall clock."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    base: str
    clock: Clock
    delivered: list[Delivery] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    planned: list[web.Response] = field(default_factory=list)
    seen: set[tuple[str, str]] = field(default_factory=set)
    elsewhere_hits: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"{self.base}/hook"


def batch(first: int, count: int, *, tenant: str = "acme", stream_id: str = "s-1") -> Batch:
    records = [
        Record(seq, f"e-{seq}", f'{{"seq":{seq},"id":"e-{seq}","action":"updateRole","note":"ü"}}')
        for seq in range(first, first + count)
    ]
    return Batch(tenant, stream_id, records)


def ndjson_of(sent: Batch) -> bytes:
    return "".join(record.text + "\n" for record in sent.records).encode()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    clock = Clock()
    state = Receiver(base="", clock=clock)

    async def hook(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        header = request.headers.get("Otaudit-Signature")
        try:
            verify(SECRET, header, body, now=clock())
        except SignatureError as error:
            state.refused.append(str(error))
            return web.Response(status=401, text=str(error))
        assert header is not None
        key = (header.partition(",")[0], header.partition(",")[2])
        if key in state.seen:
            state.refused.append("replay")
            return web.Response(status=409, text="this signature was used before: a replay")
        state.seen.add(key)
        if state.planned:
            return state.planned.pop(0)
        state.delivered.append(Delivery(dict(request.headers), body))
        return web.Response(status=200, text="ok")

    async def echo(request: web.Request) -> web.Response:
        await request.read()
        echoed = " ".join(f"{name}: {value}" for name, value in request.headers.items())
        return web.Response(status=400, text=f"bad request, you sent {echoed}")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(location=f"{state.base}/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        state.elsewhere_hits += 1
        return web.Response(text="ok")

    async def silent(request: web.Request) -> web.Response:
        await state.release.wait()
        return web.Response(text="too late")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/echo", echo)
    app.router.add_post("/moved", moved)
    app.router.add_route("*", "/elsewhere", elsewhere)
    app.router.add_post("/silent", silent)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.base = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


@pytest.fixture
def transport(receiver: Receiver) -> WebhookTransport:
    return WebhookTransport(receiver.url, SECRET, stream_id="s-1", clock=receiver.clock)


async def test_batches_arrive_whole_signed_and_labelled(receiver: Receiver, transport: WebhookTransport) -> None:
    first, second = batch(1, 3), batch(4, 250)
    try:
        await transport.send(first)
        receiver.clock.now += 1
        await transport.send(second)
    finally:
        await transport.close()
    assert [delivery.body for delivery in receiver.delivered] == [ndjson_of(first), ndjson_of(second)]
    assert receiver.delivered[0].body.decode().splitlines()[2] == first.records[2].text
    headers = receiver.delivered[0].headers
    assert headers["Content-Type"] == "application/x-ndjson"
    assert headers["Otaudit-Stream"] == "s-1"
    assert headers["Otaudit-Tenant"] == "acme"
    assert headers["Otaudit-Seq-Range"] == "1-3"
    assert headers["Idempotency-Key"] == "s-1:1-3"
    assert headers["User-Agent"] == "otaudit-collector"
    assert headers["Otaudit-Signature"].startswith(f"t={int(T0)},v1=")
    assert receiver.delivered[1].headers["Otaudit-Seq-Range"] == "4-253"
    assert receiver.delivered[1].headers["Otaudit-Signature"].startswith(f"t={int(T0) + 1},v1=")
    assert receiver.refused == []


async def test_a_500_then_a_200(receiver: Receiver, transport: WebhookTransport) -> None:
    receiver.planned.append(web.Response(status=500, text="database\x00 down\x1b[31m,\r\n\tretry\u202e later"))
    sent = batch(10, 2)
    with pytest.raises(DeliveryFailed) as caught:
        await transport.send(sent)
    assert caught.value.message == f"{receiver.base} answered 500 Internal Server Error: database down[31m, retry later"
    assert caught.value.retry_after is None
    assert receiver.delivered == []
    receiver.clock.now += 2
    await transport.send(sent)
    await transport.close()
    assert [delivery.body for delivery in receiver.delivered] == [ndjson_of(sent)]


async def test_429_asks_to_wait_in_seconds_and_503_by_date(receiver: Receiver, transport: WebhookTransport) -> None:
    receiver.planned.append(web.Response(status=429, text="slow down", headers={"Retry-After": "7"}))
    with pytest.raises(DeliveryFailed) as caught:
        await transport.send(batch(1, 1))
    assert caught.value.retry_after == 7.0
    assert caught.value.message == f"{receiver.base} answered 429 Too Many Requests: slow down"
    when = dt.datetime.fromtimestamp(T0 + 120, dt.UTC)
    receiver.planned.append(web.Response(status=503, text="", headers={"Retry-After": format_datetime(when, usegmt=True)}))
    receiver.clock.now += 1
    with pytest.raises(DeliveryFailed) as caught:
        await transport.send(batch(1, 1))
    assert caught.value.retry_after == 119.0
    assert caught.value.message == f"{receiver.base} answered 503 Service Unavailable with an empty body"
    await transport.close()


async def test_a_redirect_is_not_followed(receiver: Receiver) -> None:
    transport = WebhookTransport(f"{receiver.base}/moved", SECRET, stream_id="s-1", clock=receiver.clock)
    with pytest.raises(DeliveryFailed) as caught:
        await transport.send(batch(1, 2))
    await transport.close()
    assert caught.value.message.startswith(
        f"{receiver.base} answered 302 Found to {receiver.base}/elsewhere: redirects are not followed"
    )
    assert "set the stream's URL to the address the receiver wants" in caught.value.message
    assert receiver.elsewhere_hits == 0


async def test_a_receiver_that_never_answers_times_out(receiver: Receiver) -> None:
    transport = WebhookTransport(f"{receiver.base}/silent", SECRET, stream_id="s-1", timeout_seconds=0.3, clock=receiver.clock)
    with pytest.raises(DeliveryFailed) as caught:
        await transport.send(batch(1, 2))
    await transport.close()
    assert caught.value.message == f"no answer from {receiver.base} within 0.3 seconds (timeout)"


async def test_a_closed_port_fails_to_connect() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = WebhookTransport(f"http://127.0.0.1:{port}/hook", SECRET, stream_id="s-1")
    with pytest.raises(DeliveryFailed) as caught:
        await transport.send(batch(1, 1))
    await transport.close()
    assert caught.value.message == f"cannot connect to http://127.0.0.1:{port}: {os.strerror(errno.ECONNREFUSED)}"
    assert caught.value.retry_after is None


async def test_the_receiver_refuses_replays_and_a_later_retry_is_not_one(receiver: Receiver, transport: WebhookTransport) -> None:
    sent = batch(1, 2)
    await transport.send(sent)
    captured = receiver.delivered[0]
    replay_headers = {name: captured.headers[name] for name in ("Otaudit-Signature", "Content-Type", "Otaudit-Stream")}
    async with (
        aiohttp.ClientSession() as session,
        session.post(receiver.url, data=captured.body, headers=replay_headers) as response,
    ):
        assert response.status == 409
    # The same batch again in the same second is the same request: the receiver cannot tell it from a replay.
    with pytest.raises(DeliveryFailed, match=r"answered 409 Conflict: this signature was used before: a replay"):
        await transport.send(sent)
    receiver.clock.now += 1
    await transport.send(sent)
    await transport.close()
    assert [delivery.headers["Idempotency-Key"] for delivery in receiver.delivered] == ["s-1:1-2", "s-1:1-2"]
    assert receiver.delivered[0].headers["Otaudit-Signature"] != receiver.delivered[1].headers["Otaudit-Signature"]


async def test_a_wrong_secret_is_refused_in_the_receivers_words(receiver: Receiver) -> None:
    wrong = b"whsec_" + b"Z" * 43
    transport = WebhookTransport(receiver.url, wrong, stream_id="s-1", clock=receiver.clock)
    with pytest.raises(DeliveryFailed) as caught:
        await transport.send(batch(1, 1))
    await transport.close()
    assert caught.value.message.startswith(f"{receiver.base} answered 401 Unauthorized: the v1 signature does not match the body")
    assert caught.value.message.endswith("(does the receiver have the stream's current secret?)")
    assert receiver.delivered == []


async def test_the_secret_and_the_signature_appear_in_no_message_or_log(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    messages: list[str] = []
    clock = receiver.clock
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    for url, timeout in (
        (f"{receiver.base}/echo", 5.0),
        (f"{receiver.base}/moved", 5.0),
        (f"{receiver.base}/silent", 0.2),
        (f"http://127.0.0.1:{closed}/x", 5.0),
    ):
        transport = WebhookTransport(url, SECRET, stream_id="s-1", timeout_seconds=timeout, clock=clock)
        assert "whsec" not in repr(transport)
        with pytest.raises(DeliveryFailed) as caught:
            await transport.send(batch(1, 3))
        messages.append(caught.value.message)
        messages.append(str(caught.value))
        await transport.close()
    receiver.planned.append(web.Response(status=500, text="no"))
    transport = WebhookTransport(receiver.url, SECRET, stream_id="s-1", clock=clock)
    with pytest.raises(DeliveryFailed) as caught:
        await transport.send(batch(1, 3))
    messages.append(caught.value.message)
    await transport.close()

    signature = receiver.seen.copy().pop()[1].removeprefix("v1=")
    echo = messages[0]
    assert echo.startswith(f"{receiver.base} answered 400 Bad Request: bad request, you sent ")
    assert "Otaudit-Signature: [redacted]" in echo
    assert "Otaudit-Seq-Range: 1-3" in echo
    logged = [record.getMessage() for record in caplog.records] + [caplog.text]
    for text in messages + logged:
        assert SECRET.decode() not in text
        assert "whsec_" not in text
        assert signature not in text
        assert "v1=" not in text


async def test_a_long_answer_is_cut_to_300_characters(receiver: Receiver, transport: WebhookTransport) -> None:
    receiver.planned.append(web.Response(status=502, text="x" * 10_000))
    with pytest.raises(DeliveryFailed) as caught:
        await transport.send(batch(1, 1))
    await transport.close()
    prefix = f"{receiver.base} answered 502 Bad Gateway: "
    assert caught.value.message == prefix + "x" * 299 + "…"


async def test_send_after_close_and_settings_refused_early(receiver: Receiver, transport: WebhookTransport) -> None:
    await transport.send(batch(1, 1))
    await transport.close()
    await transport.close()
    with pytest.raises(RuntimeError, match="is closed: make a new one"):
        await transport.send(batch(2, 1))
    with pytest.raises(ValueError, match="must start with https:// or http://"):
        WebhookTransport("ftp://example.com/x", SECRET, stream_id="s-1")
    with pytest.raises(ValueError, match=r"cannot read the CA file /nonexistent/ca\.pem"):
        WebhookTransport("https://example.com/x", SECRET, stream_id="s-1", ca_file="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="a batch of stream other handed to the webhook of stream s-1"):
        await WebhookTransport(receiver.url, SECRET, stream_id="s-1").send(batch(1, 1, stream_id="other"))
    with pytest.raises(ValueError, match="record seq 1 holds a line break"):
        await WebhookTransport(receiver.url, SECRET, stream_id="s-1").send(Batch("acme", "s-1", [Record(1, "e", "a\nb")]))


async def test_https_trusts_the_ca_file_and_refuses_an_unknown_certificate(tmp_path: Path) -> None:
    ca_file, cert_file, key_file = certificates(tmp_path)
    bodies: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        verify(SECRET, request.headers.get("Otaudit-Signature"), body, now=T0)
        bodies.append(body)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        trusting = WebhookTransport(url, SECRET, stream_id="s-1", clock=lambda: T0, ca_file=str(ca_file))
        await trusting.send(batch(1, 2))
        await trusting.close()
        assert bodies == [ndjson_of(batch(1, 2))]
        doubting = WebhookTransport(url, SECRET, stream_id="s-1", clock=lambda: T0)
        with pytest.raises(DeliveryFailed) as caught:
            await doubting.send(batch(3, 1))
        await doubting.close()
        origin = url.removesuffix("/hook")
        assert caught.value.message.startswith(f"the TLS certificate of {origin} is not trusted (")
        assert caught.value.message.endswith("give the stream the CA file that issued it, or fix the receiver's certificate")
        assert len(bodies) == 1
    finally:
        await runner.cleanup()


def test_retry_after_values() -> None:
    assert retry_after_seconds("7", T0) == 7.0
    assert retry_after_seconds(" 0 ", T0) == 0.0
    assert retry_after_seconds("1.5", T0) == 1.5
    assert retry_after_seconds("-3", T0) == 0.0
    assert retry_after_seconds("Thu, 01 Jan 2026 00:01:00 GMT", T0) == 60.0
    assert retry_after_seconds("Wed, 31 Dec 2025 00:00:00 GMT", T0) == 0.0
    for unreadable in (None, "", "soon", "nan", "inf", "Thu, 01 Jan 2026 00:01:00"):
        assert retry_after_seconds(unreadable, T0) is None, unreadable


def test_plain_excerpt() -> None:
    assert plain_excerpt("a\r\nb\tc\x00d\x7fe\u2028f\u200bg") == "a b cde fg"
    assert plain_excerpt("  many    spaces  ") == "many spaces"
    assert plain_excerpt("y" * 400) == "y" * 299 + "…"
    assert plain_excerpt("") == ""


async def test_the_readme_receiver_takes_a_signed_batch_and_refuses_a_forged_one(tmp_path: Path) -> None:
    """The README's standard-library receiver, run as written (its secret and port filled in)."""
    import re
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    start = readme.index("**What a webhook receives")
    code = re.compile(r"```python\n(.*?)```", re.S).search(readme, start)
    assert code, "no python block after the webhook paragraph of README.md"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = code[1].replace('b"whsec_..."', repr(SECRET)).replace('("", 8080)', f'("127.0.0.1", {port})')
    assert repr(SECRET) in text and str(port) in text, "the README's receiver no longer has the lines the test fills in"
    script = tmp_path / "receiver.py"
    script.write_text(text, encoding="utf-8")
    child = subprocess.Popen([sys.executable, "-u", str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for _ in range(100):  # until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{port}/hook"
        good = WebhookTransport(url, SECRET, stream_id="s-1")
        forged = WebhookTransport(url, SECRET[:-1] + b"x", stream_id="s-1")
        try:
            await good.send(batch(1, 3))
            with pytest.raises(DeliveryFailed, match="401"):
                await forged.send(batch(4, 1))
        finally:
            await good.close()
            await forged.close()
    finally:
        child.terminate()
        out, _ = child.communicate(timeout=10)
    assert [line for line in out.splitlines() if line] == [r.text for r in batch(1, 3).records]
