"""Versioned SQL migrations: ``migrations/NNNN_name.sql``, each applied once, in order.

Applied by ``otaudit migrate`` and at start. A transaction-scoped advisory lock lets
several collectors start at once against one database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

__all__ = ["LOCK_KEY", "Migration", "available_migrations", "apply_migrations", "pending_migrations"]

_DIR = Path(__file__).resolve().parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
LOCK_KEY = 0x6F7461756469  # "otaudi"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path


def available_migrations() -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(_DIR.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise RuntimeError(f"migration file {path.name} is not named NNNN_name.sql")
        if found and found[-1].version == int(match[1]):  # e.g. a stale file left in an old build folder
            raise RuntimeError(f"migrations {found[-1].path.name} and {path.name} have the same number: remove the stale one")
        found.append(Migration(int(match[1]), match[2], path))
    return found


_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


def pending_migrations(conn: psycopg.Connection) -> list[Migration]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    done: set[int] = set()
    if exists and exists[0]:
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    return [m for m in available_migrations() if m.version not in done]


def apply_migrations(conninfo: str) -> list[Migration]:
    """Apply every pending migration; return those applied by this call."""
    applied = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            conn.execute(_CREATE_LEDGER)
        for migration in available_migrations():
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                row = conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (migration.version,)).fetchone()
                if row:
                    continue
                conn.execute(migration.path.read_text(encoding="utf-8"))
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (migration.version, migration.name))
                applied.append(migration)
    return applied
