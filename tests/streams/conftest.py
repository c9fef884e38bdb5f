"""Fixtures of the stream tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from stream_helpers import quick_settings
from stream_receiver import Receiver
from support import RunningCollector


@pytest.fixture
def second_db(pg_server: str, template_db: str) -> Iterator[str]:
    """A second fresh database: a receiving collector's (the first is ``db``)."""
    name = f"otaudit_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield make_conninfo(pg_server, dbname=name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver that checks every signature (stream_receiver.py)."""
    hook = Receiver()
    yield hook
    hook.stop()


@pytest.fixture
def running(db: str) -> Iterator[RunningCollector]:
    """A collector on ``db`` that delivers streams within moments (stream_helpers.quick_settings)."""
    collector = RunningCollector(quick_settings(db))
    yield collector
    collector.stop()
