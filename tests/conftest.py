"""Fixtures: a real PostgreSQL for every test that stores, never a mock.

The server is the embedded one from ``pgserver`` unless ``OTAUDIT_TEST_DATABASE_URL``
names another. Each test gets a fresh database cloned from a migrated template.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import RunningCollector, settings_for

from otaudit_collector.app import ensure_partitions
from otaudit_collector.storage.migrate import apply_migrations

TEMPLATE = f"otaudit_template_{os.getpid()}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """Conninfo of a PostgreSQL server's maintenance database."""
    url = os.environ.get("OTAUDIT_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from pgserver.postgres_server import get_server

    # Not under pytest's tmp_path: pytest prunes old temp roots, and a second pytest run
    # on the same machine would delete this server's data directory from under it.
    folder = Path(tempfile.mkdtemp(prefix="otaudit-test-pg-"))
    server = get_server(folder, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> Iterator[str]:
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
    conninfo = make_conninfo(pg_server, dbname=TEMPLATE)
    apply_migrations(conninfo)
    ensure_partitions(conninfo, 2)
    yield TEMPLATE
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')


@pytest.fixture
def db(pg_server: str, template_db: str) -> Iterator[str]:
    """Conninfo of a fresh, migrated database for this test alone."""
    name = f"otaudit_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield make_conninfo(pg_server, dbname=name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def collector(db: str) -> Iterator[RunningCollector]:
    # No token cache: these tests change a plan or revoke a token and read again at once.
    # The cache itself is tested in test_access.py and test_api_reads.py.
    running = RunningCollector(settings_for(db, {("auth", "token_cache_seconds"): 0}))
    yield running
    running.stop()
