"""What the benchmark scripts measure the same way: CPU time of processes, progress lines,
and the commit a run measured. Imported by ingest.py and query.py (run from this folder)."""

from __future__ import annotations

import os
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(*parts: object) -> None:
    """Progress, on stderr (stdout carries the report, or the JSON line with --json)."""
    print(*parts, file=sys.stderr, flush=True)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of the whole line


def postgres_cpu_seconds(postmaster_pid: int | None) -> float:
    """All of PostgreSQL: the postmaster, its live children (backends, walwriter,
    checkpointer, autovacuum ...) and the children it has already reaped; NaN when unknown."""
    if postmaster_pid is None:
        return float("nan")
    try:
        master = psutil.Process(postmaster_pid)
        t = master.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in master.children():
            try:
                c = child.cpu_times()
                total += c.user + c.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return float("nan")


def tree_cpu_seconds(pid: int) -> float:
    """A process and its live descendants (the worker processes of `otaudit serve --workers N`)."""
    total = proc_cpu_seconds(pid)
    try:
        for child in psutil.Process(pid).children(recursive=True):
            try:
                total += proc_cpu_seconds(child.pid)
            except OSError:
                pass
    except psutil.Error:
        pass
    return total


def self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def git_commit() -> str:
    """The short commit of the checkout, with '+dirty' when tracked files are changed."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], check=False, cwd=REPO, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# -- the collector as a subprocess -------------------------------------------------------

_API_LINE = re.compile(r"^\s+API\s+http://(\S+):(\d+)")


class ServedCollector:
    """``otaudit serve`` on a benchmark database, on free ports, retention off (the data sets
    reach back past the plans' retention, and a run would delete from them mid-measurement).
    ``error``: the exception a script raises when the collector cannot start; ``config``: more
    top-level sections of its configuration file (YAML text)."""

    def __init__(
        self,
        conninfo: str,
        workdir: Path,
        *,
        pepper: str,
        error: type[Exception] = RuntimeError,
        ready_seconds: float = 180,
        config: str = "",
    ) -> None:
        path = workdir / "collector.yaml"
        path.write_text("retention:\n  enabled: false\ncatalogs:\n  reload_interval_seconds: 0\n" + config)
        args = [sys.executable, "-m", "otaudit_collector", "serve", "--config", str(path), "--database-url", conninfo]
        args += ["--grpc-port", "0", "--http-port", "0", "--api-port", "0"]
        env = {**os.environ, "OTAUDIT_TOKEN_PEPPER": pepper, "OTAUDIT_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"}
        self.log_path = workdir / "collector.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=workdir, env=env)
        lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

        def drain() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, name="collector-stdout", daemon=True).start()
        deadline = time.monotonic() + ready_seconds
        self.host, self.port = "", 0
        while not self.port:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise error(f"the collector did not print its API address within {ready_seconds:.0f} s") from None
            if line is None:
                raise error(f"the collector exited before it was ready (exit {self.proc.wait()}):\n{self.log_tail()}")
            match = _API_LINE.search(line)
            if match:
                self.host, self.port = match[1].strip("[]"), int(match[2])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
