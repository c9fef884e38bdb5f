"""Memory of the collector under slow senders: N connections each declare a large OTLP/HTTP
body, send most of it and pause (issue 11's attack: 40 connections sending 60 of 61 MiB grew
the collector from 1 to 3.2 GiB).

The same attack runs twice in one run, against an ``otaudit serve`` subprocess on an embedded
PostgreSQL (pgserver): once with ``ingest.max_inflight_bytes`` at the budget under test, once
with a budget so large it bounds nothing (the baseline: what the memory would be without it).
It prints the collector's resident memory before, at its peak (VmHWM) and after, and how the
connections were answered (429 at once, or still open when the pause ended).

    python benchmarks/slow_senders.py [--connections 40] [--declared-mib 9] [--sent-mib 8] [--budget-mib 32]
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _measure import git_commit, say

MIB = 1 << 20
_PORT = re.compile(r"^\s+OTLP/HTTP\s+http://[^\s/]+:(\d+)")


def memory_mib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0]) // 1024
    return values["VmRSS"], values["VmHWM"]


def start_collector(database_url: str, budget: int, folder: Path) -> tuple[subprocess.Popen[str], int]:
    config = folder / f"otaudit-{budget}.yaml"
    config.write_text(f"ingest:\n  max_inflight_bytes: {budget}\n  body_timeout_seconds: 120\nlogging:\n  level: warning\n")
    proc = subprocess.Popen(
        [*(sys.executable, "-m", "otaudit_collector", "serve", "--config", str(config), "--database-url", database_url),
         *("--grpc-port", "0", "--http-port", "0", "--api-port", "0")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    port = None
    for line in proc.stdout:
        found = _PORT.match(line)
        if found:
            port = int(found[1])
        if line.startswith("Send events"):
            break
    if port is None:
        proc.kill()
        raise RuntimeError("the collector did not start")
    threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()
    return proc, port


def attack(port: int, connections: int, declared: int, sent: int) -> tuple[list[socket.socket], dict[str, int]]:
    """Open the connections, send ``sent`` of ``declared`` bytes on each, and leave them open."""
    sockets: list[socket.socket] = []
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    head = f"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {declared}\r\n\r\n"

    def one() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        with lock:
            sockets.append(sock)
        try:
            sock.sendall(head.encode())
            sock.sendall(b"\x0a" * sent)
            sock.settimeout(0.5)
            try:
                answer = sock.recv(64)
                outcome = answer.split(b" ", 2)[1].decode() if answer else "closed"
            except TimeoutError:
                outcome = "held open"
        except OSError as exc:  # the collector answered and closed while the body was still going
            outcome = f"refused while sending ({type(exc).__name__})"
        with lock:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    threads = [threading.Thread(target=one) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return sockets, outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--declared-mib", type=int, default=9)
    parser.add_argument("--sent-mib", type=int, default=8)
    parser.add_argument("--budget-mib", type=int, default=32)
    args = parser.parse_args()
    import pgserver

    with tempfile.TemporaryDirectory(prefix="otaudit-slow-") as tmp:
        folder = Path(tmp)
        server = pgserver.get_server(folder / "pg", cleanup_mode="stop")
        try:
            url = server.get_uri()
            report = []
            for label, budget in (("budget under test", args.budget_mib * MIB), ("no effective budget (baseline)", 1 << 40)):
                say(f"running: {label}")
                proc, port = start_collector(url, budget, folder)
                try:
                    time.sleep(1)
                    before, _ = memory_mib(proc.pid)
                    sockets, outcomes = attack(port, args.connections, args.declared_mib * MIB, args.sent_mib * MIB)
                    time.sleep(2)
                    during, peak = memory_mib(proc.pid)
                    for sock in sockets:
                        sock.close()
                    report.append((label, budget, before, during, peak, outcomes))
                finally:
                    proc.terminate()
                    proc.wait(60)
        finally:
            server.cleanup()
    print(
        f"slow senders: {args.connections} connections, each {args.sent_mib} of {args.declared_mib} MiB then a pause;"
        f" commit {git_commit()}"
    )
    for label, budget, before, during, peak, outcomes in report:
        shown = f"{budget // MIB} MiB" if budget < 1 << 40 else "1 TiB"
        print(f"  {label} (ingest.max_inflight_bytes {shown}): RSS {before} MiB before, {during} MiB during, peak {peak} MiB;")
        print(f"    answers: {', '.join(f'{n} {what}' for what, n in sorted(outcomes.items()))}")
    bounded, unbounded = report[0][4] - report[0][2], report[1][4] - report[1][2]
    print(f"  growth at peak: {bounded} MiB with the budget, {unbounded} MiB without: {bounded / max(unbounded, 1):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
