"""``otaudit serve --workers N``: processes sharing the OTLP ports, one API adding up their metrics,
a worker killed under load and started again with nothing lost or stored twice."""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from support import CollectorProcess, good_attributes, record, request, wait_until
from test_faults import RetryingClient, assert_exactly_once, batches

from otaudit_collector.metrics import Metrics, merge_expositions


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_merged_metrics_add_up_counts_and_keep_the_latest_time() -> None:
    first, second = Metrics(), Metrics()
    first.records_accepted.inc(3)
    second.records_accepted.inc(4)
    first.records_received.labels("grpc").inc(5)
    second.records_received.labels("http").inc(2)
    first.request_duration.labels("grpc", "ok").observe(0.02)
    second.request_duration.labels("grpc", "ok").observe(3.0)
    first.retention_last_run.set(100)
    second.retention_last_run.set(50)
    merged = _samples(merge_expositions([first.render(), second.render()], workers=3).decode())
    assert merged[("otaudit_records_accepted_total", ())] == 7
    assert merged[("otaudit_records_received_total", (("transport", "grpc"),))] == 5
    assert merged[("otaudit_records_received_total", (("transport", "http"),))] == 2
    ok = (("outcome", "ok"), ("transport", "grpc"))
    assert merged[("otaudit_request_duration_seconds_count", ok)] == 2
    assert merged[("otaudit_request_duration_seconds_bucket", (("le", "0.025"), *ok))] == 1
    assert merged[("otaudit_request_duration_seconds_bucket", (("le", "+Inf"), *ok))] == 2
    assert merged[("otaudit_retention_last_run_timestamp_seconds", ())] == 100
    created = _samples(first.render().decode())[("otaudit_records_accepted_created", ())]
    assert merged[("otaudit_records_accepted_created", ())] == min(
        created, _samples(second.render().decode())[("otaudit_records_accepted_created", ())]
    )
    assert merged[("otaudit_workers_reporting", ())] == 2  # of 3: one did not answer


def _peer_pid(path: Path) -> int:
    """The process serving the Unix socket ``path`` (SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return int(pid)


def _serving(path: Path, other_than: int) -> bool:
    try:
        return _peer_pid(path) != other_than
    except OSError:  # not listening yet
        return False


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _worker_metrics(path: Path) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: worker\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode()


def _received(text: str, transport: str) -> float:
    return _samples(text).get(("otaudit_records_received_total", (("transport", transport),)), 0.0)


@pytest.mark.slow
def test_workers_share_the_ports_and_a_killed_one_loses_nothing(db: str, tmp_path: Path) -> None:
    args = ["serve", "--workers", "2", "--database-url", db, "--grpc-port", "0", "--http-port", "0", "--api-port", "0"]
    # TMPDIR: where the supervisor makes the folder of the workers' metrics sockets, for this test to look in.
    proc = CollectorProcess(args, env={"TMPDIR": str(tmp_path)}, cwd=tmp_path).start()
    assert proc.proc is not None
    try:
        assert any(line.startswith("  workers     2 processes") for line in proc.output), proc.output
        api = f"http://127.0.0.1:{proc.ports['API']}"
        (socket_1,) = tmp_path.glob("otaudit-workers-*/worker-1.sock")
        workers = _children(proc.proc.pid)
        assert len(workers) == 2 and _peer_pid(socket_1) in workers

        # Each request on a connection of its own: the kernel spreads them over both workers.
        http = f"http://127.0.0.1:{proc.ports['OTLP/HTTP']}/v1/logs"
        for _ in range(24):
            body = request([record(attrs=good_attributes()) for _ in range(5)]).SerializeToString()
            answer = requests.post(
                http, data=body, headers={"Content-Type": "application/x-protobuf", "Connection": "close"}, timeout=30
            )
            assert answer.status_code == 200, answer.text
        by_worker_1 = _received(_worker_metrics(socket_1), "http")
        assert 0 < by_worker_1 < 120, "both workers took connections"
        merged = requests.get(api + "/metrics", timeout=10).text
        assert _received(merged, "http") == 120  # the API worker adds up both
        assert _samples(merged)[("otaudit_workers_reporting", ())] == 2
        assert requests.get(api + "/readyz", timeout=10).json() == {"status": "ready"}

        # Worker 1 killed under load (six clients, a connection each): the clients retry, it is started again.
        killed = _peer_pid(socket_1)
        bodies = batches(90, 20)
        clients = [RetryingClient(proc.grpc_target, bodies[i::6]).start() for i in range(6)]
        while sum(c.acknowledged for c in clients) < 25 and any(c.thread.is_alive() for c in clients):
            time.sleep(0.01)
        os.kill(killed, signal.SIGKILL)
        for client in clients:
            client.join()
        assert sum(c.acknowledged for c in clients) == 90
        assert_exactly_once(db, 120 + 90 * 20)
        wait_until(lambda: _serving(socket_1, other_than=killed), 30, "worker 1 started again")
        assert killed not in _children(proc.proc.pid)
        wait_until(
            lambda: _samples(requests.get(api + "/metrics", timeout=10).text)[("otaudit_workers_reporting", ())] == 2,
            30,
            "both workers reporting again",
        )
        assert any("a collector worker exited; starting it again" in line for line in proc.output)
        workers = _children(proc.proc.pid)
    finally:
        code = proc.terminate()
    assert code == 0, proc.output
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "the workers stopped with the supervisor"
    assert not list(tmp_path.glob("otaudit-workers-*")), "the sockets' folder is removed"


@pytest.mark.slow
def test_workers_stop_when_the_supervisor_is_killed(db: str, tmp_path: Path) -> None:
    args = ["serve", "--workers", "2", "--database-url", db, "--grpc-port", "0", "--http-port", "0", "--api-port", "0"]
    proc = CollectorProcess(args, cwd=tmp_path).start()
    assert proc.proc is not None
    workers = _children(proc.proc.pid)
    assert len(workers) == 2
    proc.kill()  # SIGKILL: no chance to stop them; each hears it through PR_SET_PDEATHSIG
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 60, "the workers to stop")
    with socket.socket() as sock:  # and nothing listens on the OTLP port any more
        assert sock.connect_ex(("127.0.0.1", proc.ports["OTLP/gRPC"])) != 0
