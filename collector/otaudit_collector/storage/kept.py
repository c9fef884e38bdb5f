"""A connection a poller keeps from one round to the next.

The collector's pollers (due streams, queued export jobs) look for work every second by
default. A connection made each round starts a PostgreSQL backend each round: 86,400 a day
per poller and collector, each a fork on the database server. ``KeptConnection`` makes one
autocommit connection when first asked, hands the same one out after that, and makes it
again once it is closed or broken (the round that found it broken has already raised its
``OperationalError``, which the poller logs before trying again).
"""

from __future__ import annotations

from typing import Any

import psycopg

__all__ = ["KeptConnection"]


class KeptConnection:
    """One autocommit connection, named ``application_name`` in ``pg_stat_activity``."""

    def __init__(self, conninfo: str, application_name: str) -> None:
        self._conninfo = conninfo
        self._name = application_name
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def get(self) -> psycopg.AsyncConnection[Any]:
        """The kept connection, made (again) when there is none usable."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, application_name=self._name)
        return self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
