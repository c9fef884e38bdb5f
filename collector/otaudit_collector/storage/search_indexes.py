"""Indexes for q's ``details.KEY:PREFIX*``, one per key the operator names.

An event's ``details`` may hold any key, and PostgreSQL has no built-in index that answers a
prefix on the values of every key at once (GIN cannot range-scan; a GIN of value prefixes
cost about 30 us of PostgreSQL CPU per stored event, measured, several times what storing
the event costs). A btree on one key's value costs a few microseconds per stored event. So
the operator names the keys admins search by prefix (``search.details_prefix_keys``) and
each gets

    CREATE INDEX events_details_prefix_<hash> ON events
        (tenant, ((doc -> 'details') ->> 'KEY') text_pattern_ops)

built at start (after the migrations) and by ``otaudit migrate``, then ``ANALYZE``d; an
index whose key is no longer named is dropped at start (``otaudit migrate`` only says so). ``core.query`` writes every details prefix in
the form such an index answers (a byte-wise range on the value), so a named key is found
through its index and any other key by scanning the time window, with the same answers
either way. The index is not partial (``WHERE ... ? 'KEY'``) although that would skip
events without the key: PostgreSQL keeps no statistics for a partial index's expression,
so it guessed a handful of matches for a prefix most events have, and sorted thousands of
rows for a page the time index fills at once (62 ms against 0.4 ms, measured).

Building one on a large trail blocks writes to each partition while it is built, as the
migrations do: name a new key in a quiet hour (collectors buffer and retry meanwhile).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from otaudit_collector.storage.migrate import LOCK_KEY

__all__ = ["IndexChanges", "KEY_PATTERN", "index_name", "sync_prefix_indexes"]

log = logging.getLogger(__name__)

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}$")
"""A details key q can name (``core.query``'s ``details.KEY``), so the same rule for both."""

_PREFIX = "events_details_prefix_"


@dataclass(frozen=True, slots=True)
class IndexChanges:
    created: tuple[str, ...]  # the keys whose index this call built
    dropped: tuple[str, ...]  # index names dropped: their key is no longer named
    unnamed: tuple[str, ...] = ()  # index names whose key is not named, kept (drop=False)


def index_name(key: str) -> str:
    """The index of ``key``: a hash, since a key may hold characters a name may not (and a
    name is at most 63 bytes); the key itself is in the index's comment."""
    return _PREFIX + hashlib.sha256(key.encode()).hexdigest()[:16]


def sync_prefix_indexes(conninfo: str, keys: Iterable[str], *, drop: bool = True) -> IndexChanges:
    """Make the prefix indexes on ``events`` exactly those of ``keys``, under the migrations'
    lock (two collectors starting at once build each index once). With ``drop`` false, an
    index whose key is not named is kept and returned in ``unnamed`` (``otaudit migrate`` run
    without the collectors' configuration must not drop what they use)."""
    wanted = {index_name(k): k for k in keys}
    for key in wanted.values():
        if not KEY_PATTERN.match(key):  # the configuration schema checks it too
            raise ValueError(f"search.details_prefix_keys: {key!r} is not a details key q can name ({KEY_PATTERN.pattern})")
    created: list[str] = []
    dropped: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            present = {
                row[0]
                for row in conn.execute(
                    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                    " WHERE i.indrelid = 'events'::regclass AND c.relname LIKE %s",
                    (_PREFIX.replace("_", r"\_") + "%",),
                )
            }
            unnamed = sorted(present - wanted.keys())
            for name in unnamed if drop else ():
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
                dropped.append(name)
            for name, key in sorted(wanted.items()):
                if name in present:
                    continue
                log.info("building the details prefix index of %r (search.details_prefix_keys)", key)
                value = sql.SQL("((doc -> 'details') ->> {})").format(sql.Literal(key))
                conn.execute(
                    sql.SQL("CREATE INDEX {} ON events (tenant, {} text_pattern_ops)").format(sql.Identifier(name), value)
                )
                conn.execute(
                    sql.SQL("COMMENT ON INDEX {} IS {}").format(sql.Identifier(name), sql.Literal(f"details prefix: {key}"))
                )
                created.append(key)
        if created:  # the planner's statistics of the new expressions (each partition is sampled)
            conn.execute("ANALYZE events")
    return IndexChanges(tuple(created), tuple(dropped), () if drop else tuple(unnamed))
