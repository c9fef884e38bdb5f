"""What the benchmark scripts measure the same way: CPU time of processes, progress lines,
and the commit a run measured. Imported by ingest.py and query.py (run from this folder)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
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
