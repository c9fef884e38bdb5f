"""storage.kept: the connection a poller keeps from round to round, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from otaudit_collector.storage.kept import KeptConnection


async def _backend(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT pg_backend_pid()")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def test_one_connection_is_kept_and_made_again_once_broken(db: str) -> None:
    async def scenario() -> None:
        kept = KeptConnection(db, "otaudit-test-kept")
        first = await kept.get()
        pid = await _backend(first)
        assert await kept.get() is first and await _backend(first) == pid, "the same connection, round after round"
        with psycopg.connect(db, autocommit=True) as admin:
            named = admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'otaudit-test-kept'").fetchall()
            assert [r[0] for r in named] == [pid]
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):  # the round that meets the cut raises, as a poller logs it
            await _backend(first)
        again = await kept.get()
        assert again is not first and await _backend(again) != pid
        await kept.close()
        assert again.closed
        assert await _backend(await kept.get()) > 0, "usable after a close too"
        await kept.close()

    asyncio.run(scenario())
