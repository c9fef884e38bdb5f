"""Verifiable export bundles (``otaudit_verify.bundle``) of a tenant's events, from PostgreSQL.

A bundle holds the matching events up to the tenant's latest checkpoint, with their leaf
material (the stored document, ``received_at`` and seals), the leaf hashes of every seq of
the range they span (events the filters left out show only as hashes), the range proof
tying those leaves to the checkpoint's root, the signed checkpoint and its key. Before a
bundle is written, each event's leaf is recomputed and compared with the stored one: a
bundle that would not verify is never handed out; the error names the event.

Events committed after the latest checkpoint (at most ``integrity.checkpoint_seconds``
old) are not in the bundle; the manifest's ``last_seq`` and ``tree_size`` say where it ends.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import IO, Any

import psycopg

from otaudit_collector.storage import log as logdb
from otaudit_verify import merkle, tiles
from otaudit_verify.bundle import write_bundle
from otaudit_verify.entry import entry_hash

__all__ = ["BundleRefused", "write_tenant_bundle", "stream_bundle", "BUNDLE_BLOCK_BYTES"]

BUNDLE_BLOCK_BYTES = 1 << 20

_RECEIVED = "to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"


class BundleRefused(RuntimeError):
    """No bundle can be made: no checkpoint yet, or the stored log does not match an event."""


def _leaves(conn: psycopg.Connection[Any], tenant: str, first: int, last: int) -> bytes:
    """The stored leaf hashes of seq first..last (level-0 tiles)."""
    lo, hi = first - 1, last
    rows = conn.execute(
        "SELECT idx, hashes FROM log_tiles WHERE tenant = %s AND level = 0 AND idx >= %s AND idx <= %s ORDER BY idx",
        (tenant, lo // tiles.TILE_WIDTH, (hi - 1) // tiles.TILE_WIDTH),
    ).fetchall()
    data = b"".join(bytes(hashes) for _, hashes in rows)
    start = (lo - (lo // tiles.TILE_WIDTH) * tiles.TILE_WIDTH) * merkle.HASH_SIZE
    leaves = data[start : start + (hi - lo) * merkle.HASH_SIZE]
    if len(leaves) != (hi - lo) * merkle.HASH_SIZE:
        raise BundleRefused(f"the stored log lacks leaves of seq {first}..{last}: run 'otaudit verify --tenant {tenant}'")
    return leaves


def write_tenant_bundle(
    conninfo: str, tenant: str, where: str, params: list[Any], out: IO[bytes], filters: Mapping[str, Any]
) -> int:
    """Write the bundle of the events matching ``where`` (which names the tenant) to ``out``; returns the events in it."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        checkpoint = logdb.latest_checkpoint(conn, tenant)
        if checkpoint is None:
            raise BundleRefused(
                f"tenant '{tenant}' has no signed checkpoint yet: one is made within integrity.checkpoint_seconds of its"
                " first event; try again then"
            )
        size = checkpoint.size
        bounds = conn.execute(f"SELECT min(seq), max(seq), count(*) FROM events WHERE {where} AND seq <= %s", [*params, size]).fetchone()
        first, last, count = (None, None, 0) if bounds is None or bounds[0] is None else (int(bounds[0]), int(bounds[1]), int(bounds[2]))
        leaves = proof = b""
        if first is not None and last is not None:
            leaves = _leaves(conn, tenant, first, last)
            source = logdb.TileSource(conn, tenant)
            source.prefetch(tiles.tiles_for_range(first - 1, last, size))
            proof = b"".join(merkle.range_proof(first - 1, last, size, source.hash_at(size)))

        def events() -> Iterator[dict[str, Any]]:
            with conn.transaction(), conn.cursor(name="otaudit_bundle") as cur:
                cur.itersize = 2000
                cur.execute(
                    f"SELECT seq, id, doc::text, seals::text, {_RECEIVED} FROM events WHERE {where} AND seq <= %s ORDER BY seq",
                    [*params, size],
                )
                assert first is not None
                for seq, event_id, doc_text, seals_text, received in cur:
                    doc = json.loads(doc_text)
                    seals = json.loads(seals_text) if seals_text else {}
                    at = (seq - first) * merkle.HASH_SIZE
                    if entry_hash(doc, received, seals) != leaves[at : at + merkle.HASH_SIZE]:
                        raise BundleRefused(
                            f"event {event_id} (seq {seq}) is not what the log recorded: it was altered;"
                            f" run 'otaudit verify --tenant {tenant}'"
                        )
                    yield {"seq": seq, "id": event_id, "received_at": received, "event": doc, "seals": seals}

        write_bundle(
            out,
            tenant=tenant,
            origin=_origin(checkpoint.note),
            checkpoint_note=checkpoint.note,
            keys=[checkpoint.key],
            events=events() if first is not None else iter(()),
            first_seq=first,
            last_seq=last,
            tree_size=size,
            leaves=leaves,
            range_proof=proof,
            checkpoint_time=checkpoint.created_at.isoformat(),
            filters=dict(filters),
        )
        return count


def _origin(note: str) -> str:
    return note.split("\n", 1)[0]


async def stream_bundle(
    conninfo: str,
    tenant: str,
    where: str,
    params: list[Any],
    sink: Callable[[bytes], Awaitable[None]],
    filters: Mapping[str, Any],
    progress: Callable[[int], Awaitable[None]] | None = None,
) -> int:
    """Write the bundle to a temporary file in a worker thread, then hand it to ``sink`` in blocks."""
    with tempfile.TemporaryFile(prefix="otaudit-bundle-", suffix=".zip") as file:
        rows = await asyncio.to_thread(write_tenant_bundle, conninfo, tenant, where, params, file, filters)
        file.seek(0)
        while block := await asyncio.to_thread(file.read, BUNDLE_BLOCK_BYTES):
            await sink(block)
            if progress is not None:
                await progress(rows)
    return rows
