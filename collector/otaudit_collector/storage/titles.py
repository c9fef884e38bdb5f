"""The catalog_titles table (migration 0009): the events' human titles, where a CSV export's COPY can read them."""

from __future__ import annotations

import psycopg

from otaudit_collector.core.catalog import CatalogSet

__all__ = ["store_titles", "store_titles_async"]

_UPSERT = """
INSERT INTO catalog_titles (category, event, title)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])
ON CONFLICT (category, event) DO UPDATE SET title = EXCLUDED.title, updated_at = now()
WHERE catalog_titles.title IS DISTINCT FROM EXCLUDED.title
"""


def _columns(catalogs: CatalogSet) -> tuple[list[str], list[str], list[str]]:
    events = [e for c in catalogs.categories.values() for e in c.events.values()]
    return [e.category for e in events], [e.name for e in events], [e.title for e in events]


def store_titles(conninfo: str, catalogs: CatalogSet) -> None:
    """Write the loaded catalogs' titles. Never deletes: an older event's title stays for its exports."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(_UPSERT, _columns(catalogs))


async def store_titles_async(conn: psycopg.AsyncConnection, catalogs: CatalogSet) -> None:
    """``store_titles`` on a connection of the collector's pool (at start and on each catalog reload)."""
    await conn.execute(_UPSERT, _columns(catalogs))
