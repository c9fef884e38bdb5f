"""A PostgreSQL primary and a streaming hot standby of it, made with pgserver's binaries.

The primary is an ordinary ``ControlledPostgres`` (pgcontrol.py); the standby is a copy of it
taken with ``pg_basebackup -R -X stream`` (which writes its ``primary_conninfo`` and
``standby.signal``), started on a port of its own. initdb's ``--auth=trust`` already lets
local and 127.0.0.1 replication connections in, and the defaults (``wal_level = replica``,
``max_wal_senders = 10``, ``hot_standby = on``) are what streaming replication needs.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
from pgcontrol import ControlledPostgres, free_port

__all__ = ["ReplicatedPostgres"]

# Quick to start and stop; durability does not matter to a test (both servers are thrown away).
_SETTINGS = """
fsync = off
full_page_writes = off
wal_level = replica
max_wal_senders = 4
hot_standby = on
wal_receiver_status_interval = 1s
"""


class _Standby(ControlledPostgres):
    """A server whose data folder is a base backup of ``primary`` rather than a fresh initdb."""

    def clone(self, primary: ControlledPostgres) -> _Standby:
        # pg_basebackup makes pgdata itself (mode 0700, owned by whoever runs it: the pgserver user under root)
        self._run(
            "pg_basebackup",
            "-D",
            str(self.pgdata),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-R",  # standby.signal and primary_conninfo
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        )
        return self


class ReplicatedPostgres:
    """``primary`` and ``standby`` under ``base``; ``url(server, dbname)`` to connect to either."""

    def __init__(self, base: Path) -> None:
        (base / "primary").mkdir(parents=True)
        (base / "standby").mkdir(parents=True)
        self.primary = ControlledPostgres(base / "primary")
        self.standby = _Standby(base / "standby")
        self.standby.port = free_port()
        while self.standby.port == self.primary.port:
            self.standby.port = free_port()

    def start(self) -> ReplicatedPostgres:
        self.primary.init()
        with (self.primary.pgdata / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(_SETTINGS)
        self.primary.start()
        self.standby.clone(self.primary)
        self.standby.start()
        return self

    def stop(self) -> None:
        for server in (self.standby, self.primary):
            try:
                server.stop()
            except RuntimeError:
                pass  # already stopped (a test stopped the standby on purpose)

    @staticmethod
    def url(server: ControlledPostgres, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{server.port}/{dbname}"

    def wait_replayed(self, timeout: float = 20) -> None:
        """Until the standby has replayed everything the primary has written so far."""
        with psycopg.connect(self.url(self.primary), autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        target = row[0]
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.url(self.standby), autocommit=True) as conn:
            while True:
                done = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()
                if done and done[0]:
                    return
                assert time.monotonic() < deadline, f"the standby did not replay up to {target} within {timeout} s"
                time.sleep(0.02)
