"""``otaudit serve --workers N``: N collector processes sharing the OTLP ports, under one supervisor.

The supervisor (the ``otaudit serve`` process) owns what there is one of: the embedded
PostgreSQL, the migrations, the first admin token and the three ports. It reserves each port
with SO_REUSEPORT without listening on it, so that port 0 is resolved once and a worker that
starts again binds the same port, and nothing but this user's SO_REUSEPORT sockets can take it.
Then it starts the workers, each a fresh interpreter running this module (no fork of a process
that has gRPC threads). Every worker listens on the OTLP/gRPC and OTLP/HTTP ports with
SO_REUSEPORT, and the kernel spreads new connections over them. Worker 0 also serves the API and
runs the periodic work (retention, export jobs, streams, checkpoints): there is one API, one
session clock and one set of export limits. Its ``/metrics`` adds up every worker's figures,
which the others serve on Unix sockets in a private folder.

A worker that exits unexpectedly is started again, after 1 s, doubling up to 30 s while it keeps
failing soon after starting; what it had accepted was committed first (an OTLP answer follows the
commit), and what it had not is retried by its clients, to a worker that is up. SIGTERM and SIGINT
stop every worker gracefully, SIGHUP reloads their catalogs. A worker stops itself when the
supervisor dies (PR_SET_PDEATHSIG), so that no orphan goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otaudit_collector.app import Collector, Endpoints, Role, bind_port, catalog_dirs, describe, settle_process
from otaudit_collector.config import Settings
from otaudit_collector.core.catalog import CatalogSet, load_catalogs
from otaudit_collector.integrity import load_log_keys
from otaudit_collector.logs import setup_logging

__all__ = ["WorkerFailed", "supervise"]

log = logging.getLogger("otaudit")

START_TIMEOUT_SECONDS = 120.0
"""How long a worker may take to load its catalogs and listen."""
RESTART_DELAYS = (1.0, 30.0)
"""The first and the longest wait before a worker that exited is started again."""
STEADY_SECONDS = 60.0
"""A worker that ran this long before it exited is started again after the first delay."""


class WorkerFailed(Exception):
    """A worker could not start; its own error is in the log just above."""


@dataclass(slots=True)
class _Worker:
    index: int
    spec: bytes
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    delay: float = RESTART_DELAYS[0]

    async def start(self) -> None:
        """Start the worker and wait until it listens; ``WorkerFailed`` when it exits first."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "otaudit_collector.workers",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops the workers in order
        )
        self.started = time.monotonic()
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(self.spec)  # through a pipe: the settings carry secrets (pepper, database URL)
        self.process.stdin.close()
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), START_TIMEOUT_SECONDS)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise WorkerFailed(f"worker {self.index} did not start within {START_TIMEOUT_SECONDS:.0f} s") from None
        if not line:
            code = await self.process.wait()
            raise WorkerFailed(f"worker {self.index} exited with code {code} before it was ready (its error is logged above)")

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


@dataclass(slots=True)
class _Supervisor:
    workers: list[_Worker]
    grace_seconds: float
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def watch(self, worker: _Worker) -> None:
        """Start ``worker`` again whenever it exits, until the supervisor stops."""
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if self.stopping.is_set():
                return
            if time.monotonic() - worker.started >= STEADY_SECONDS:
                worker.delay = RESTART_DELAYS[0]
            log.error(
                "a collector worker exited; starting it again",
                extra={"worker": worker.index, "exit_code": code, "restart_in_seconds": worker.delay},
            )
            while not self.stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), worker.delay)
                    return
                worker.delay = min(worker.delay * 2, RESTART_DELAYS[1])
                try:
                    await worker.start()
                except WorkerFailed as exc:
                    log.error("a collector worker could not start again; will try again", extra={"error": str(exc)})
                    continue
                if self.stopping.is_set():  # the stop came while it started: it missed the SIGTERM
                    worker.signal(signal.SIGTERM)
                else:
                    log.info("collector worker started again", extra={"worker": worker.index})
                break

    async def stop(self) -> None:
        """SIGTERM to every worker (each finishes its requests in flight), SIGKILL to what outlives the grace."""
        self.stopping.set()
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        running = [w.process.wait() for w in self.workers if w.process is not None and w.process.returncode is None]
        if not running:
            return
        _, late = await asyncio.wait([asyncio.ensure_future(r) for r in running], timeout=self.grace_seconds + 10)
        if late:
            log.error("collector workers outlived the grace period; killing them", extra={"workers": len(late)})
            for worker in self.workers:
                worker.signal(signal.SIGKILL)
            await asyncio.wait(late)


def supervise(settings: Settings, conninfo: str, database: str, catalogs: CatalogSet, announce: Callable[[], None]) -> None:
    """Run ``listen.workers`` collector processes until SIGTERM or SIGINT; print where they listen
    once every worker is ready (``announce`` first: the bootstrap token, when there is one)."""
    listen = settings.get("listen")
    count = int(listen["workers"])
    host = listen["host"]
    api_host = listen["api_host"] or host
    held = [
        bind_port(host, listen["grpc_port"], shared=True, what="OTLP/gRPC"),
        bind_port(host, listen["http_port"], shared=True, what="OTLP/HTTP"),
        bind_port(api_host, listen["api_port"], shared=True, what="the API"),
    ]
    folder = Path(tempfile.mkdtemp(prefix="otaudit-workers-"))  # 0700: the metrics sockets are this user's
    try:
        # Made here when it is new, once, before the workers load it.
        keys = load_log_keys(settings, conninfo) if settings.get("integrity", "enabled") else None
        grpc_port, http_port, api_port = (sock.getsockname()[1] for sock in held)
        raw = json.loads(json.dumps(settings.raw))
        raw["listen"].update(grpc_port=grpc_port, http_port=http_port, api_port=api_port)
        sockets = [str(folder / f"worker-{i}.sock") for i in range(count)]
        workers = [
            _Worker(
                i,
                json.dumps(
                    {
                        "settings": raw,
                        "source": settings.source,
                        "config_dir": str(settings.config_dir) if settings.config_dir else None,
                        "conninfo": conninfo,
                        "index": i,
                        "sockets": sockets,
                        "supervisor": os.getpid(),
                    }
                ).encode(),
            )
            for i in range(count)
        ]
        endpoints = Endpoints((host, grpc_port), (host, http_port), (api_host, api_port))
        banner = list(describe(endpoints, database, catalogs, keys))
        banner.insert(-1, f"  workers     {count} processes share the OTLP ports; worker 0 serves the API")
        asyncio.run(_run(workers, float(settings.get("shutdown", "grace_seconds")), banner, announce))
    finally:
        for sock in held:
            sock.close()
        shutil.rmtree(folder, ignore_errors=True)


async def _run(workers: list[_Worker], grace_seconds: float, banner: list[str], announce: Callable[[], None]) -> None:
    supervisor = _Supervisor(workers, grace_seconds)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        for worker in workers:
            worker.signal(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, reload)
    starting = [asyncio.create_task(w.start()) for w in workers]
    stopped = asyncio.ensure_future(stop.wait())
    pending: set[asyncio.Future[Any]] = {*starting, stopped}
    failed: BaseException | None = None
    while not stopped.done() and failed is None and not all(t.done() for t in starting):
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        failed = next((t.exception() for t in done if t is not stopped and t.exception() is not None), None)
    if failed is not None or stopped.done():
        for task in starting:
            task.cancel()
        await asyncio.gather(*starting, return_exceptions=True)
        await supervisor.stop()
        if failed is not None:
            raise failed
        return
    announce()
    print("\n".join(banner), flush=True)
    watchers = [asyncio.create_task(supervisor.watch(w)) for w in workers]
    await stopped
    log.info("stopping: the workers finish their requests in flight")
    await supervisor.stop()
    await asyncio.gather(*watchers, return_exceptions=True)


# -- a worker ------------------------------------------------------------------------------


def _die_with(supervisor: int) -> None:
    """Receive SIGTERM when the supervisor dies, and stop now if it is gone already."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    if os.getppid() != supervisor:
        sys.exit(1)


class _WorkerField(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def _worker_main() -> int:
    spec: dict[str, Any] = json.loads(sys.stdin.buffer.read())
    _die_with(int(spec["supervisor"]))
    config_dir = spec["config_dir"]
    settings = Settings(spec["settings"], spec["source"], Path(config_dir) if config_dir else None)
    setup_logging(
        settings.get("logging", "level"),
        settings.get("logging", "format"),
        float(settings.get("logging", "repeat_window_seconds")),
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(int(spec["index"])))
    index = int(spec["index"])
    sockets: list[str] = spec["sockets"]
    role = Role(
        api=index == 0,
        shared_ports=True,
        metrics_socket=None if index == 0 else sockets[index],
        peers=tuple(sockets[1:]) if index == 0 else (),
    )
    catalogs = load_catalogs(catalog_dirs(settings))

    async def run() -> None:
        collector = Collector(settings, spec["conninfo"], catalogs, role)
        try:
            await collector.start()
        except BaseException:
            await collector.stop(0)
            raise
        settle_process()

        def ready() -> None:
            sys.stdout.write("ready\n")  # the supervisor waits for this line
            sys.stdout.flush()

        await collector.run_until_signalled(float(settings.get("shutdown", "grace_seconds")), ready)

    try:
        asyncio.run(run())
    except Exception as exc:
        log.critical("collector worker failed", extra={"error": str(exc)}, exc_info=not isinstance(exc, OSError))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
