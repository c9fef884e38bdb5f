"""A PostgreSQL server the tests can stop and start: pgserver's binaries, run by hand.

It listens on a fixed loopback port, so a collector's URL stays valid across restarts.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from pgserver._commands import POSTGRES_BIN_PATH


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ControlledPostgres:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.pgdata = base / "pgdata"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:  # postgres refuses to run as root
            from pgserver.utils import ensure_user_exists

            ensure_user_exists("pgserver")
            self.user = "pgserver"
            base.chmod(0o777)
            for parent in base.parents:
                if parent == Path("/"):
                    break
                parent.chmod(parent.stat().st_mode | 0o011)

    def _run(self, *args: str) -> None:
        command = [str(POSTGRES_BIN_PATH / args[0]), *args[1:]]
        if self.user:
            # runuser rather than subprocess's user=: that forces a plain fork() in this
            # process full of gRPC threads, and the child then sometimes crashes in gRPC's
            # fork handlers before it can exec.
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} {' '.join(args[1:])} failed ({result.returncode}): {result.stderr.strip()}")

    def init(self) -> ControlledPostgres:
        self.pgdata.mkdir()
        if self.user:
            shutil.chown(self.pgdata, self.user)
        self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "--no-sync")
        return self

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-w",
            "-l",
            str(self.pgdata / "log"),
            "-o",
            f"-h 127.0.0.1 -p {self.port} -k {self.pgdata}",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-m", "fast", "stop")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
