"""The syslog transport against a real rsyslogd (Debian's rsyslog and rsyslog-gnutls, installed
by tests/setup), started by each test with a config in tmp_path: imtcp with octet-counted
framing (plain, or TLS with the gtls driver and certificates made here), and a template that
writes what rsyslog parsed of each message, one line each, to a file the test reads back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from rsyslogd import WAIT_SECONDS, Rsyslog, free_port
from tls_files import certificates

from otaudit_collector.streams.syslog import SyslogTransport
from otaudit_collector.streams.transport import Batch, DeliveryFailed, Record

pytestmark = pytest.mark.slow


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path, free_port(), None)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def rsyslog_tls(tmp_path: Path) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path, free_port(), certificates(tmp_path))
    server.start()
    yield server
    server.stop()


def event(seq: int, **fields: str) -> Record:
    document = {
        "seq": seq,
        "id": f"e-{seq}",
        "event": "user.role_updated",
        "occurred_at": f"2026-11-21T10:15:{seq % 60:02d}.123456Z",
        "category": "iam",
        "outcome": "success",
        "tenant": "acme",
        "note": 'Grüße, 東京 "quoted" [brackets] back\\slash',
        **fields,
    }
    return Record(seq, f"e-{seq}", json.dumps(document, ensure_ascii=False, separators=(",", ":")))


def batch(first: int, count: int, **fields: str) -> Batch:
    return Batch("acme", "s-1", [event(seq, **fields) for seq in range(first, first + count)])


def check_written(lines: list[list[str]], sent: list[Record]) -> None:
    """Each written line is the record sent at its place: the JSON intact, the header and
    structured data as rsyslog parsed them."""
    assert len(lines) == len(sent), lines
    for fields, record in zip(lines, sent, strict=True):
        stamp, pri, hostname, app, procid, msgid, data, msg = fields
        document = json.loads(record.text)
        assert msg.removeprefix("\ufeff") == record.text
        assert stamp == document["occurred_at"]
        assert pri == ("109" if document["outcome"] == "success" else "108")
        assert (hostname, app, procid, msgid) == ("collector-1", "otaudit", "-", document["event"][:32])
        category = document["category"].replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
        assert data == (
            f'[otaudit@32473 tenant="acme" seq="{record.seq}" id="{record.id}" category="{category}" '
            f'outcome="{document["outcome"]}"]'
        )


async def test_batches_arrive_in_order_with_json_and_structured_data_intact(rsyslog: Rsyslog) -> None:
    transport = SyslogTransport("127.0.0.1", rsyslog.port, hostname="collector-1")
    first, second = batch(1, 5), batch(6, 3, outcome="denied", category='ca"t]e\\g 東', event="x" * 40)
    try:
        await transport.send(first)
        await transport.send(second)
    finally:
        await transport.close()
    check_written(rsyslog.lines(8), [*first.records, *second.records])


async def test_tls_with_the_gtls_driver(rsyslog_tls: Rsyslog, tmp_path: Path) -> None:
    transport = SyslogTransport(
        "127.0.0.1", rsyslog_tls.port, tls=True, ca_file=str(tmp_path / "ca.pem"), server_name="localhost", hostname="collector-1"
    )
    try:
        await transport.send(batch(1, 3))
        await transport.send(batch(4, 2, outcome="failure"))
    finally:
        await transport.close()
    check_written(rsyslog_tls.lines(5), [*batch(1, 3).records, *batch(4, 2, outcome="failure").records])


async def test_tls_refuses_a_certificate_of_another_ca(rsyslog_tls: Rsyslog, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    transport = SyslogTransport(
        "127.0.0.1", rsyslog_tls.port, tls=True, ca_file=str(certificates(other)[0]), hostname="collector-1"
    )
    with pytest.raises(DeliveryFailed) as caught:
        await transport.send(batch(1, 1))
    await transport.close()
    assert caught.value.message.startswith(
        f"the TLS certificate of the syslog receiver 127.0.0.1:{rsyslog_tls.port} is not trusted"
    )
    assert "give the stream the CA file" in caught.value.message


async def test_tls_checks_the_name(rsyslog_tls: Rsyslog, tmp_path: Path) -> None:
    transport = SyslogTransport(
        "127.0.0.1", rsyslog_tls.port, tls=True, ca_file=str(tmp_path / "ca.pem"), server_name="elsewhere.example"
    )
    with pytest.raises(DeliveryFailed, match=r"not trusted .*Hostname mismatch"):
        await transport.send(batch(1, 1))
    await transport.close()


async def test_a_restarted_receiver_gets_the_next_batch_on_a_new_connection(rsyslog: Rsyslog) -> None:
    transport = SyslogTransport("127.0.0.1", rsyslog.port, hostname="collector-1")
    try:
        await transport.send(batch(1, 2))
        assert len(rsyslog.lines(2)) == 2
        rsyslog.stop()  # closes the kept-open connection
        await asyncio.sleep(0)
        rsyslog.start()
        await transport.send(batch(3, 2))
    finally:
        await transport.close()
    check_written(rsyslog.lines(4), [*batch(1, 2).records, *batch(3, 2).records])


async def test_no_receiver_fails_naming_host_port_and_the_error_then_recovers(rsyslog: Rsyslog) -> None:
    transport = SyslogTransport("127.0.0.1", rsyslog.port, hostname="collector-1")
    try:
        await transport.send(batch(1, 1))
        rsyslog.lines(1)
        rsyslog.stop()
        with pytest.raises(DeliveryFailed) as caught:
            await transport.send(batch(2, 1))
        assert caught.value.message == f"cannot connect to the syslog receiver 127.0.0.1:{rsyslog.port}: Connection refused"
        rsyslog.start()
        await transport.send(batch(2, 2))
    finally:
        await transport.close()
    check_written(rsyslog.lines(3), [*batch(1, 1).records, *batch(2, 2).records])


async def test_a_receiver_that_stops_reading_makes_send_fail_and_the_next_send_reconnect() -> None:
    """A receiver of our own whose first connection never reads: the kernel's buffers fill, the
    send gives up after its timeout and drops the connection; the next send uses a new one."""
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    connections: list[asyncio.StreamWriter] = []
    stuck = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        if len(connections) == 1:
            await stuck.wait()
            writer.transport.abort()
            return
        received.set_result(await reader.read())  # until the transport closes its connection
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = SyslogTransport("127.0.0.1", port, hostname="collector-1", timeout_seconds=1)
    large = Batch("acme", "s-1", [event(seq, note="x" * 60_000) for seq in range(1, 401)])  # 24 MB
    try:
        with pytest.raises(DeliveryFailed) as caught:
            await transport.send(large)
        assert caught.value.message == (
            f"the syslog receiver 127.0.0.1:{port} took no data for 1 seconds (timeout); "
            "the batch is sent again on a new connection"
        )
        stuck.set()
        await transport.send(batch(1, 1))
        await transport.close()
        length, _, message = (await asyncio.wait_for(received, WAIT_SECONDS)).partition(b" ")
    finally:
        await transport.close()
        server.close()
        await server.wait_closed()
    assert len(connections) == 2
    assert int(length) == len(message)
    assert b'seq="1"' in message


def test_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="port is a number from 1 to 65535"):
        SyslogTransport("h", 0)
    with pytest.raises(ValueError, match="set tls=True"):
        SyslogTransport("h", 514, ca_file="x")
    with pytest.raises(ValueError, match="cannot read the CA"):
        SyslogTransport("h", 6514, tls=True, ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="set the stream's hostname"):
        SyslogTransport("h", 514, hostname="two words")
    with pytest.raises(ValueError, match="IANA PEN"):
        SyslogTransport("h", 514, sd_id="nopen")
