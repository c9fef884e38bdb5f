"""OTLP/HTTP and the HTTP ports under hostile or broken clients (issue 11).

Compressed bodies are decoded whole or refused; a body is admitted (a concurrency slot, bytes
of ``ingest.max_inflight_bytes``) before it is read and must arrive within
``ingest.body_timeout_seconds``; a request head must arrive within
``listen.header_timeout_seconds`` and an idle connection is closed after
``listen.idle_timeout_seconds``. Raw sockets, so that a test controls every byte and pause;
every wait is bounded by a socket timeout, and nothing asserts how long anything took.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from google.protobuf.json_format import MessageToDict
from google.rpc import status_pb2
from support import RunningCollector, count, good_attributes, record, request, settings_for, wait_until

PROTOBUF = "application/x-protobuf"
WAIT = 30.0  # seconds a socket waits for the collector before the test fails (a bound, never a measure)


def one_event() -> bytes:
    return request([record(attrs=good_attributes(**{"log.record.uid": str(uuid.uuid4())}))]).SerializeToString()


def bounded(db: str, body_timeout: float = 120, header_timeout: float = 1, idle_timeout: float = 1) -> RunningCollector:
    """A collector with small bounds: 2 requests at once, 64 KiB of bodies in flight, 1 s for a
    request head and for an idle connection (unless told otherwise)."""
    return RunningCollector(
        settings_for(
            db,
            {
                ("ingest", "max_concurrent_requests"): 2,
                ("ingest", "max_inflight_bytes"): 64 * 1024,
                ("ingest", "max_request_bytes"): 1024 * 1024,
                ("ingest", "body_timeout_seconds"): body_timeout,
                ("listen", "header_timeout_seconds"): header_timeout,
                ("listen", "idle_timeout_seconds"): idle_timeout,
            },
        )
    )


@pytest.fixture
def tight(db: str) -> Iterator[RunningCollector]:
    running = bounded(db)
    yield running
    running.stop()


def post(url: str, body: bytes, encoding: str | None = None) -> requests.Response:
    headers = {"Content-Type": PROTOBUF}
    if encoding:
        headers["Content-Encoding"] = encoding
    return requests.post(url, data=body, headers=headers, timeout=WAIT)


def message(response: requests.Response) -> str:
    return str(status_pb2.Status.FromString(response.content).message)


# -- raw connections ------------------------------------------------------------------


def connect(endpoint: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(endpoint, timeout=WAIT)
    sock.settimeout(WAIT)
    return sock


def head(length: int | None, *, path: str = "/v1/logs", extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return f"POST {path} HTTP/1.1\r\nHost: otaudit\r\nContent-Type: {PROTOBUF}\r\n{size}{extra}\r\n".encode()


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the next response on ``sock`` (fails the test on a timeout)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before an answer: {data!r}"
        data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed in the middle of an answer"
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed ``sock`` (reading what it still sends); fails the test on a timeout."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def settled(running: RunningCollector) -> None:
    ingestor = running.collector.ingestor
    wait_until(lambda: ingestor.in_flight == 0 and ingestor.bytes.used == 0, what="every slot and byte released")


# -- compressed bodies ------------------------------------------------------------------


def test_every_gzip_member_is_decoded(collector: RunningCollector) -> None:
    """RFC 1952 allows several members; their bodies concatenate (here: two OTLP requests,
    which protobuf merges). The landed code stored the first member's event only."""
    first, second = one_event(), one_event()
    answered = post(collector.http_url, gzip.compress(first) + gzip.compress(second), "gzip")
    assert answered.status_code == 200, answered.content
    assert count(collector.conninfo) == 2, "both members' events are stored"


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
)
@pytest.mark.parametrize("garbage", [b"\x00", b"not a gzip member, just bytes", b"\x1f\x8b\x08"])
def test_bytes_after_the_compressed_stream_are_refused(
    collector: RunningCollector, encoding: str, compress: Any, garbage: bytes
) -> None:
    """An acknowledgement never covers bytes that were not decoded: trailing garbage is a 400
    that says so, and nothing is stored (the landed code answered 200 and dropped it)."""
    answered = post(collector.http_url, compress(one_event()) + garbage, encoding)
    assert answered.status_code == 400
    assert "after the end of its" in message(answered)
    assert count(collector.conninfo) == 0


def test_the_size_limit_applies_to_all_members_together(db: str) -> None:
    running = RunningCollector(settings_for(db, {("ingest", "max_request_bytes"): 4096}))
    try:
        body = one_event()
        members = b"".join(gzip.compress(body) for _ in range(4096 // len(body) + 1))  # each small, all > 4096
        answered = post(running.http_url, members, "gzip")
        assert answered.status_code == 413
        assert "larger than 4096 bytes after decompression" in message(answered)
        assert post(running.http_url, gzip.compress(body) + gzip.compress(one_event()), "gzip").status_code == 200
    finally:
        running.stop()


def test_a_truncated_or_corrupt_stream_is_still_refused(collector: RunningCollector) -> None:
    whole = gzip.compress(one_event())
    for body, words in ((whole[:-5], "truncated"), (whole[:10] + b"\xff" * 40, "corrupt"), (b"", "truncated")):
        answered = post(collector.http_url, body, "gzip")
        assert answered.status_code == 400 and words in message(answered), (body, message(answered))
    assert count(collector.conninfo) == 0


# -- admission before reading -------------------------------------------------------------


def test_a_request_is_admitted_before_its_body_is_read(tight: RunningCollector, caplog: pytest.LogCaptureFixture) -> None:
    """Two connections sending their bodies slowly hold both slots: a third request is answered
    429 at once, unread (the landed code read it, then processed it beside them). Clients that
    go away in the middle of their body free their slot, and are no error of the collector."""
    readers = []
    for _ in range(2):
        sock = connect(tight.endpoints.http)
        sock.sendall(head(1000) + b"\x0a")  # 1 byte of 1000: the body is being read
        readers.append(sock)
    wait_until(lambda: tight.collector.ingestor.in_flight == 2, what="both slow requests admitted")
    refused = post(tight.http_url, one_event())
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "limit 2" in message(refused)
    for sock in readers:
        sock.close()
    settled(tight)
    assert post(tight.http_url, one_event()).status_code == 200
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_declared_length_is_charged_before_reading(tight: RunningCollector) -> None:
    """A Content-Length that cannot fit the bytes in flight now is answered 429 without reading
    (the client sent only its headers); one that can never fit, 413. Both at once, unread."""
    holder = connect(tight.endpoints.http)
    holder.sendall(head(40 * 1024) + b"\x0a")  # 40 of 64 KiB reserved, 1 byte sent
    wait_until(lambda: tight.collector.ingestor.bytes.used == 40 * 1024, what="the first body charged")

    busy = connect(tight.endpoints.http)
    busy.sendall(head(30 * 1024))
    status, headers, body = answer(busy)
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert "ingest.max_inflight_bytes" in status_pb2.Status.FromString(body).message

    never = connect(tight.endpoints.http)
    never.sendall(head(100 * 1024))
    status, _, body = answer(never)
    assert status == 413 and "send smaller batches" in status_pb2.Status.FromString(body).message

    holder.close()
    settled(tight)
    for sock in (busy, never):
        sock.close()
    assert post(tight.http_url, one_event()).status_code == 200


def test_a_chunked_body_is_charged_as_it_is_read(tight: RunningCollector) -> None:
    holder = connect(tight.endpoints.http)
    holder.sendall(head(40 * 1024) + b"\x0a")
    wait_until(lambda: tight.collector.ingestor.bytes.used == 40 * 1024, what="the first body charged")
    chunked = connect(tight.endpoints.http)
    chunk = b"\x0a" * 8192
    chunked.sendall(head(None) + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 8)  # 64 KiB: over the 24 KiB left; no end
    status, headers, _ = answer(chunked)
    assert status == 429 and int(headers["retry-after"]) >= 1
    holder.close()
    chunked.close()
    settled(tight)


def test_a_json_body_is_charged_what_parsing_it_takes(tight: RunningCollector) -> None:
    """Parsed JSON takes many times its text (an empty object, 3 bytes, becomes a 64-byte
    dict): 20 KiB of empty records fits the 64 KiB budget as bytes, but not once parsed, and
    is refused before json.loads holds it. An ordinary JSON request still fits."""
    empties = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [{}] * 5000}]}]}).encode()
    assert len(empties) < 32 * 1024
    refused = requests.post(tight.http_url, data=empties, headers={"Content-Type": "application/json"}, timeout=WAIT)
    assert refused.status_code == 413, refused.content
    assert "ingest.max_inflight_bytes" in refused.json()["message"]
    settled(tight)
    ordinary = json.dumps(MessageToDict(request([record()]))).encode()
    assert requests.post(tight.http_url, data=ordinary, headers={"Content-Type": "application/json"}, timeout=WAIT).ok


def test_a_body_that_does_not_arrive_in_time_is_answered_408_and_released(db: str) -> None:
    running = bounded(db, body_timeout=1)
    try:
        sock = connect(running.endpoints.http)
        sock.sendall(head(1000) + b"\x0a" * 10)
        status, headers, body = answer(sock)
        assert status == 408 and headers.get("connection", "").lower() == "close"
        assert "did not arrive whole within 1 seconds" in status_pb2.Status.FromString(body).message
        assert closed_by_server(sock)
        settled(running)
        assert post(running.http_url, one_event()).status_code == 200
    finally:
        running.stop()


# -- connections: request heads and idle keep-alive -----------------------------------------


@pytest.fixture
def heads_only(db: str) -> Iterator[RunningCollector]:
    """The head timeout alone (1 s): an idle connection would be kept 60 s, longer than a test waits,
    so what closes a connection here is the head timeout and not aiohttp's keep-alive timer."""
    running = bounded(db, header_timeout=1, idle_timeout=60)
    yield running
    running.stop()


@pytest.fixture
def idle_only(db: str) -> Iterator[RunningCollector]:
    running = bounded(db, header_timeout=60, idle_timeout=1)
    yield running
    running.stop()


@pytest.mark.parametrize("port", ["http", "api"])
def test_a_connection_that_never_finishes_its_head_is_closed(heads_only: RunningCollector, port: str) -> None:
    tight = heads_only
    endpoint = tight.endpoints.http if port == "http" else tight.endpoints.api
    silent = connect(endpoint)  # sends nothing at all
    partial = connect(endpoint)
    partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: otaudit\r\n")  # never the blank line
    assert closed_by_server(silent) and closed_by_server(partial)


def test_a_head_trickled_byte_by_byte_is_closed_all_the_same(heads_only: RunningCollector) -> None:
    """The timeout counts from the head's first byte, not from the last one received."""
    sock = connect(heads_only.endpoints.api)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
    deadline = time.monotonic() + WAIT
    try:
        while time.monotonic() < deadline:  # one byte of one header value every 0.1 s: under every size limit
            sock.sendall(b"a")
            time.sleep(0.1)
        raise AssertionError("a trickled request head kept its connection open")
    except (BrokenPipeError, ConnectionResetError):
        pass


def test_an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_served(idle_only: RunningCollector) -> None:
    sock = connect(idle_only.endpoints.api)
    for _ in range(2):  # keep-alive works: two requests on one connection
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: otaudit\r\n\r\n")
        status, _, _ = answer(sock)
        assert status == 200
    assert closed_by_server(sock), "idle after its answers: closed"


def test_head_size_limits_are_answered_400_without_quoting_the_request(collector: RunningCollector) -> None:
    secret = "otaudit_0123456789ab_" + "S" * 43
    for head_text in (
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}{'A' * 9000}\r\n\r\n",
        "GET /healthz HTTP/1.1\r\n" + "".join(f"X-{i}: {secret}\r\n" for i in range(100)) + "\r\n",
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\x01\r\n\r\n",
    ):
        sock = connect(collector.endpoints.api)
        sock.sendall(head_text.encode())
        status, _, body = answer(sock)
        assert status == 400 and b"malformed" in body and b"SSSS" not in body
        sock.close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_inflating_far_beyond_one_step_is_decoded_whole(encoding: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decompression goes in small steps, each charged before the next: a body whose every
    compressed byte inflates to many (zeros) is still decoded to the last byte, fed in any
    chunking, and charged for exactly its decompressed size."""
    from otaudit_collector.receivers import otlp_http
    from otaudit_collector.receivers.admission import ByteBudget

    monkeypatch.setattr(otlp_http, "_STEP", 1000)
    plain = b"\x00" * 300_000 + b"end"
    packed = gzip.compress(plain) + gzip.compress(b"!") if encoding == "gzip" else zlib.compress(plain, 9)
    for chunk_size in (1, 7, len(packed)):
        budget = ByteBudget(10 << 20)
        charge = budget.charge()
        body = otlp_http._Body(encoding, 1 << 20, otlp_http._Budget(charge, 1.0), charged=True)
        for start in range(0, len(packed), chunk_size):
            body.feed(packed[start : start + chunk_size])
        expected = plain + (b"!" if encoding == "gzip" else b"")
        assert body.finish() == expected
        assert charge.held == len(expected)
