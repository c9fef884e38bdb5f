"""The tamper-evident log in PostgreSQL (migration 0010): tiles, tree sizes, checkpoints.

Each tenant's events, in ``seq`` order, are the leaves of an RFC 6962 tree; leaf index =
``seq`` - 1. The writer extends the tree in the transaction that assigns ``seq``, under the
``tenant_seq`` row lock that orders every commit of the tenant across collectors, so the
rows, ``seq`` and the tree cannot disagree. Only the rightmost partial tile of each level
changes when leaves are appended (``otaudit_verify.tiles.append_leaves``); the writer keeps
them between commits, and reads them again whenever the tree's size is not the one it
last wrote (another collector committed meanwhile).

``tenant_seq.log_size`` is how many events are leaves: ``last_seq`` while the log is on and
caught up. With the log off (``integrity.enabled: false``) it stays behind; ``catch_up``
seals and appends the missing events, a chunk per transaction under the same lock.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from otaudit_verify import merkle, tiles
from otaudit_verify.entry import entry_hash_owned, personal_pointers, seal

__all__ = ["RightEdges", "append_in_commit", "read_tiles", "LogState", "log_state", "hash_reader_for", "catch_up"]

log = logging.getLogger(__name__)

_RIGHT_SQL = (
    "SELECT t.tenant, t.level, t.hashes FROM log_tiles t"
    " JOIN unnest(%s::text[], %s::smallint[], %s::bigint[]) AS k(tenant, level, idx)"
    " ON t.tenant = k.tenant AND t.level = k.level AND t.idx = k.idx"
)
_UPSERT_SQL = (
    "INSERT INTO log_tiles (tenant, level, idx, hashes)"
    " SELECT * FROM unnest(%s::text[], %s::smallint[], %s::bigint[], %s::bytea[])"
    " ON CONFLICT (tenant, level, idx) DO UPDATE SET hashes = excluded.hashes"
)
_SIZE_SQL = (
    "UPDATE tenant_seq t SET log_size = k.size FROM unnest(%s::text[], %s::bigint[]) AS k(tenant, size) WHERE t.tenant = k.tenant"
)


class LogCorrupt(RuntimeError):
    """The stored tiles do not fit the tree size recorded beside them: the tree cannot be extended."""


class RightEdges:
    """The writer's copy of each tenant's rightmost partial tiles, as of the tree size it last committed:
    for the ``limit`` tenants that committed last (up to ~24 KiB each); others are read again."""

    def __init__(self, limit: int = 1024) -> None:
        self.known: dict[str, tuple[int, dict[int, bytes]]] = {}
        self.limit = limit

    def update(self, committed: Mapping[str, tuple[int, dict[int, bytes]]]) -> None:
        for tenant, edge in committed.items():
            self.known.pop(tenant, None)  # to the end: the most recent
            self.known[tenant] = edge
        while len(self.known) > self.limit:
            del self.known[next(iter(self.known))]

    def get(self, tenant: str, size: int) -> dict[int, bytes] | None:
        entry = self.known.get(tenant)
        return entry[1] if entry is not None and entry[0] == size else None

    def forget(self, tenants: Sequence[str]) -> None:
        for tenant in tenants:
            self.known.pop(tenant, None)


async def append_in_commit(
    cur: psycopg.AsyncCursor[Any], edges: RightEdges, appends: Mapping[str, tuple[int, Sequence[bytes]]]
) -> dict[str, tuple[int, dict[int, bytes]]]:
    """Append each tenant's leaves (``appends[tenant] = (size before, leaf hashes)``) to its tree,
    inside the caller's transaction, which holds the tenants' ``tenant_seq`` row locks.

    Returns the right edges after the append, for ``edges`` once the transaction committed.
    """
    missing = [(tenant, size) for tenant, (size, _) in appends.items() if edges.get(tenant, size) is None]
    fetched: dict[str, dict[int, bytes]] = {tenant: {} for tenant, _ in missing}
    wanted = [(tenant, level, index) for tenant, size in missing for level, index, _ in tiles.partial_tiles(size)]
    if wanted:
        await cur.execute(_RIGHT_SQL, ([w[0] for w in wanted], [w[1] for w in wanted], [w[2] for w in wanted]))
        for tenant, level, hashes in await cur.fetchall():
            fetched[str(tenant)][int(level)] = bytes(hashes)
    changed_tenants, levels, indexes, contents = [], [], [], []
    after: dict[str, tuple[int, dict[int, bytes]]] = {}
    for tenant, (size, leaves) in appends.items():
        right = edges.get(tenant, size)
        if right is None:
            right = fetched[tenant]
        for level, index, width in tiles.partial_tiles(size):
            have = right.get(level)
            if have is None or len(have) < width * merkle.HASH_SIZE:
                raise LogCorrupt(
                    f"tenant '{tenant}': the log's tile {tiles.tile_path(level, index, width)} is missing or short at tree size"
                    f" {size}; run 'otaudit verify --tenant {tenant}' to find what was altered"
                )
            right[level] = have[: width * merkle.HASH_SIZE]
        changes = tiles.append_leaves(size, right, list(leaves))
        new_size = size + len(leaves)
        new_right: dict[int, bytes] = {}
        partial = {(level, index) for level, index, _ in tiles.partial_tiles(new_size)}
        for (level, index), data in changes.items():
            changed_tenants.append(tenant)
            levels.append(level)
            indexes.append(index)
            contents.append(data)
            if (level, index) in partial:
                new_right[level] = data
        for level, _index, _width in tiles.partial_tiles(new_size):  # a partial tile this append did not touch
            if level not in new_right:
                new_right[level] = right[level]
        after[tenant] = (new_size, new_right)
    if changed_tenants:
        await cur.execute(_UPSERT_SQL, (changed_tenants, levels, indexes, contents))
    await cur.execute(_SIZE_SQL, (list(after), [size for size, _ in after.values()]))
    return after


# -- reading -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogState:
    size: int
    """Leaves in the tree."""
    last_seq: int
    """Events the tenant has had (``log_size`` < ``last_seq`` while the log catches up or is off)."""


def log_state(conn: psycopg.Connection[Any], tenant: str) -> LogState:
    row = conn.execute("SELECT log_size, last_seq FROM tenant_seq WHERE tenant = %s", (tenant,)).fetchone()
    return LogState(0, 0) if row is None else LogState(int(row[0]), int(row[1]))


def read_tiles(
    conn: psycopg.Connection[Any], tenant: str, wanted: Sequence[tuple[int, int, int]]
) -> dict[tuple[int, int], bytes]:
    """The stored tiles (level, index) -> bytes among ``wanted`` (level, index, width), in one query."""
    if not wanted:
        return {}
    return tiles_of(conn.execute(TILES_SQL, tiles_params(tenant, wanted)).fetchall())


def hash_reader_for(stored: Mapping[tuple[int, int], bytes], size: int) -> merkle.HashAt:
    """A ``hash_at`` over tiles already read (``read_tiles``); a tile it lacks is an error naming it."""

    def read_tile(level: int, index: int, width: int) -> bytes:
        data = stored.get((level, index))
        if data is None or len(data) < width * merkle.HASH_SIZE:
            raise LogCorrupt(f"the log's tile {tiles.tile_path(level, index, width)} is missing or short")
        return data[: width * merkle.HASH_SIZE]

    return tiles.hash_reader(size, read_tile)


# -- catching up ---------------------------------------------------------------------------

_CATCH_UP_CHUNK = 5_000


def catch_up(
    conninfo: str,
    tenant: str,
    personal: Callable[[dict[str, Any]], Iterable[str]] = lambda doc: (),
    *,
    chunk: int = _CATCH_UP_CHUNK,
) -> int:
    """Append the tenant's events that are not leaves yet (stored while the log was off, or before
    it existed), sealing those without seals (``personal``: a catalog's own personal pointers for
    an event); a chunk per transaction under the tenant's lock. Returns how many were appended."""
    appended = 0
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while True:
            with conn.transaction():
                row = conn.execute("SELECT log_size, last_seq FROM tenant_seq WHERE tenant = %s FOR UPDATE", (tenant,)).fetchone()
                if row is None or int(row[0]) >= int(row[1]):
                    return appended
                size, last = int(row[0]), int(row[1])
                upto = min(last, size + chunk)
                rows = conn.execute(
                    "SELECT seq, doc, seals, to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
                    " FROM events WHERE tenant = %s AND seq > %s AND seq <= %s ORDER BY seq",
                    (tenant, size, upto),
                ).fetchall()
                if [int(r[0]) for r in rows] != list(range(size + 1, upto + 1)):
                    raise LogCorrupt(
                        f"tenant '{tenant}': events {size + 1}..{upto} are not all stored; the log cannot cover"
                        " events that are gone (pruned before the log caught up)"
                    )
                leaves = []
                for seq, doc, stored_seals, received in rows:
                    seals = stored_seals
                    if seals is None:
                        pointers = personal_pointers(doc, personal(doc))
                        if pointers:
                            seals = seal(doc, pointers)
                            conn.execute(
                                "UPDATE events SET seals = %s WHERE tenant = %s AND seq = %s", (json.dumps(seals), tenant, seq)
                            )
                    leaves.append(entry_hash_owned(doc, received, seals or {}))  # doc is not used after
                _append_sync(conn, tenant, size, leaves)
                appended += len(leaves)


def _append_sync(conn: psycopg.Connection[Any], tenant: str, size: int, leaves: Sequence[bytes]) -> None:
    wanted = tiles.partial_tiles(size)
    stored = read_tiles(conn, tenant, wanted)
    right = {}
    for level, index, width in wanted:
        data = stored.get((level, index))
        if data is None or len(data) < width * merkle.HASH_SIZE:
            raise LogCorrupt(f"tenant '{tenant}': the log's tile {tiles.tile_path(level, index, width)} is missing or short")
        right[level] = data[: width * merkle.HASH_SIZE]
    changes = tiles.append_leaves(size, right, list(leaves))
    keys = list(changes)
    conn.execute(_UPSERT_SQL, ([tenant] * len(keys), [k[0] for k in keys], [k[1] for k in keys], [changes[k] for k in keys]))
    conn.execute("UPDATE tenant_seq SET log_size = %s WHERE tenant = %s", (size + len(leaves), tenant))


# -- checkpoints ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    tenant: str
    size: int
    root: bytes
    note: str
    key: str
    created_at: datetime


_CHECKPOINT_COLUMNS = "tenant, size, root, note, key, created_at"


def _checkpoint(row: Sequence[Any]) -> StoredCheckpoint:
    return StoredCheckpoint(str(row[0]), int(row[1]), bytes(row[2]), str(row[3]), str(row[4]), row[5])


LATEST_CHECKPOINT_SQL = f"SELECT {_CHECKPOINT_COLUMNS} FROM log_checkpoints WHERE tenant = %s ORDER BY size DESC LIMIT 1"
CHECKPOINT_AT_SQL = f"SELECT {_CHECKPOINT_COLUMNS} FROM log_checkpoints WHERE tenant = %s AND size = %s"
TILES_SQL = (
    "SELECT t.level, t.idx, t.hashes FROM log_tiles t JOIN unnest(%s::smallint[], %s::bigint[]) AS k(level, idx)"
    " ON t.level = k.level AND t.idx = k.idx WHERE t.tenant = %s"
)


def checkpoint_of(row: Sequence[Any] | None) -> StoredCheckpoint | None:
    return None if row is None else _checkpoint(row)


def tiles_params(tenant: str, wanted: Iterable[tuple[int, int, int]]) -> tuple[list[int], list[int], str]:
    wanted = list(wanted)
    return [w[0] for w in wanted], [w[1] for w in wanted], tenant


def tiles_of(rows: Iterable[Sequence[Any]]) -> dict[tuple[int, int], bytes]:
    return {(int(level), int(idx)): bytes(hashes) for level, idx, hashes in rows}


def latest_checkpoint(conn: psycopg.Connection[Any], tenant: str) -> StoredCheckpoint | None:
    """The tenant's largest checkpoint, or None."""
    return checkpoint_of(conn.execute(LATEST_CHECKPOINT_SQL, (tenant,)).fetchone())


def checkpoint_at(conn: psycopg.Connection[Any], tenant: str, size: int) -> StoredCheckpoint | None:
    return checkpoint_of(conn.execute(CHECKPOINT_AT_SQL, (tenant, size)).fetchone())


def all_checkpoints(conn: psycopg.Connection[Any], tenant: str) -> list[StoredCheckpoint]:
    rows = conn.execute(f"SELECT {_CHECKPOINT_COLUMNS} FROM log_checkpoints WHERE tenant = %s ORDER BY size", (tenant,))
    return [_checkpoint(row) for row in rows.fetchall()]


def store_checkpoint(conn: psycopg.Connection[Any], tenant: str, size: int, root: bytes, note: str, key: str) -> bool:
    """Keep a signed checkpoint; False when one of that size was already kept (another collector's)."""
    cur = conn.execute(
        "INSERT INTO log_checkpoints (tenant, size, root, note, key) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (tenant, size) DO NOTHING",
        (tenant, size, root, note, key),
    )
    return cur.rowcount == 1


def tenants_to_checkpoint(conn: psycopg.Connection[Any]) -> list[tuple[str, int, int]]:
    """(tenant, tree size, size of its latest checkpoint or 0) of every tenant whose tree outgrew its checkpoint."""
    rows = conn.execute(
        "SELECT s.tenant, s.log_size, coalesce(c.size, 0) FROM tenant_seq s"
        " LEFT JOIN LATERAL (SELECT size FROM log_checkpoints k WHERE k.tenant = s.tenant ORDER BY size DESC LIMIT 1) c"
        " ON true WHERE s.log_size > coalesce(c.size, 0) ORDER BY s.tenant"
    ).fetchall()
    return [(str(t), int(n), int(c)) for t, n, c in rows]


def tenants_behind(conn: psycopg.Connection[Any]) -> list[str]:
    """Tenants with events that are not leaves of their tree yet."""
    return [str(row[0]) for row in conn.execute("SELECT tenant FROM tenant_seq WHERE log_size < last_seq ORDER BY tenant")]


class TileSource:
    """Tiles of one tenant read on demand, each once: for a root or a proof at any size up to the tree's."""

    def __init__(self, conn: psycopg.Connection[Any], tenant: str) -> None:
        self._conn = conn
        self._tenant = tenant
        self._tiles: dict[tuple[int, int], bytes] = {}

    def prefetch(self, wanted: Iterable[tuple[int, int, int]]) -> None:
        missing = [w for w in wanted if (w[0], w[1]) not in self._tiles]
        self._tiles.update(read_tiles(self._conn, self._tenant, missing))

    def hash_at(self, size: int) -> merkle.HashAt:
        def read_tile(level: int, index: int, width: int) -> bytes:
            if (level, index) not in self._tiles:
                self._tiles.update(read_tiles(self._conn, self._tenant, [(level, index, width)]))
            data = self._tiles.get((level, index))
            if data is None or len(data) < width * merkle.HASH_SIZE:
                raise LogCorrupt(
                    f"tenant '{self._tenant}': the log's tile {tiles.tile_path(level, index, width)} is missing or short"
                )
            return data[: width * merkle.HASH_SIZE]

        return tiles.hash_reader(size, read_tile)

    def root(self, size: int) -> bytes:
        self.prefetch(tiles.tiles_for_root(size))
        return merkle.tree_root(size, self.hash_at(size))
