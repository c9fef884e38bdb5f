"""The log's read routes: the signed checkpoint, the verifier keys, the tiles, and proofs.

Same tokens and tenant isolation as every read: each route serves the token's own tenant's
tree. The checkpoint, the keys, the tiles and a consistency proof are hashes only, no event
content; an inclusion proof names an event, so it goes through ``readable_event``: the
plan's categories and query window apply to it as to ``GET /v1/events/{id}``.

Tiles follow C2SP tlog-tiles under ``/v1/log/``: ``/v1/log/tile/<L>/<N>[.p/<W>]``. Entry
bundles (``tile/entries/...``) are not served: an event's leaf entry is recomputed from the
event itself (``GET /v1/events/{id}`` gives its seals), so that the plan applies to content.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from otaudit_collector.api.reads import error, principal_of, readable_event
from otaudit_collector.core.query import BadFilter
from otaudit_collector.integrity import LogKeys
from otaudit_collector.storage import log as logdb
from otaudit_verify import merkle, tiles
from otaudit_verify.checkpoint import TlogProof
from otaudit_verify.entry import leaf_entry_owned

__all__ = ["LogContext", "add_log_routes", "LOG"]


@dataclass(frozen=True, slots=True)
class LogContext:
    pool: AsyncConnectionPool[Any]
    keys: Callable[[], LogKeys | None]


LOG: web.AppKey[LogContext] = web.AppKey("log", LogContext)


def add_log_routes(app: web.Application, ctx: LogContext) -> None:
    app[LOG] = ctx
    app.router.add_get("/v1/log/checkpoint", _checkpoint)
    app.router.add_get("/v1/log/key", _key)
    app.router.add_get("/v1/log/tile/{path:[\\s\\S]+}", _tile)  # any character: a bad path is a JSON 404, not the router's
    app.router.add_get("/v1/log/consistency", _consistency)
    app.router.add_get("/v1/events/{id}/proof", _proof)


def _text(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/plain", charset="utf-8")


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


async def _fetch(request: web.Request, sql: str, params: Any) -> list[tuple[Any, ...]]:
    async with request.app[LOG].pool.connection() as conn:
        cur = await conn.execute(sql, params)
        rows: list[tuple[Any, ...]] = await cur.fetchall()
        return rows


async def _hashes(request: web.Request, tenant: str, size: int, wanted: set[tuple[int, int, int]]) -> merkle.HashAt:
    """A ``hash_at`` of the tenant's tree at ``size`` over the tiles in ``wanted``, read in one query."""
    rows = await _fetch(request, logdb.TILES_SQL, logdb.tiles_params(tenant, wanted))
    return logdb.hash_reader_for(logdb.tiles_of(rows), size)


async def _latest(request: web.Request, tenant: str, size: int | None = None) -> logdb.StoredCheckpoint | None:
    if size is None:
        rows = await _fetch(request, logdb.LATEST_CHECKPOINT_SQL, (tenant,))
    else:
        rows = await _fetch(request, logdb.CHECKPOINT_AT_SQL, (tenant, size))
    return logdb.checkpoint_of(rows[0] if rows else None)


def _inconsistent(exc: Exception) -> web.Response:
    return error(
        500,
        "log_inconsistent",
        f"the stored log does not prove this: {exc}. It may have been altered; an operator runs 'otaudit verify' to find what",
    )


def _size_param(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18 or int(text) < 1:
        raise BadFilter(name, f"'{text[:40]}' is not a tree size (a whole number of leaves, at least 1)")
    return int(text)


async def _checkpoint(request: web.Request) -> web.Response:
    found = await _latest(request, principal_of(request).tenant)
    if found is None:
        return error(
            404,
            "not_found",
            "this tenant's log has no checkpoint yet: one is signed within integrity.checkpoint_seconds of its first event",
        )
    return _text(found.note)


async def _key(request: web.Request) -> web.Response:
    keys = request.app[LOG].keys()
    if keys is None:
        return error(503, "unavailable", "the log's keys are not loaded yet: retry")
    tenant = principal_of(request).tenant
    return _text("".join(v.vkey() + "\n" for v in keys.verifiers(tenant)))


async def _tile(request: web.Request) -> web.Response:
    path = "tile/" + request.match_info["path"]
    try:
        level, index, width = tiles.parse_tile_path(path)
    except tiles.TileError as exc:
        return error(404, "not_found", f"{path}: {exc}")
    if level < 0:
        return error(
            404,
            "not_found",
            "entry bundles are not served: an event's leaf entry is recomputed from the event (GET /v1/events/{id})",
        )
    tenant = principal_of(request).tenant
    rows = await _fetch(request, logdb.TILES_SQL, logdb.tiles_params(tenant, [(level, index, width)]))
    data = logdb.tiles_of(rows).get((level, index))
    if data is None or len(data) < width * merkle.HASH_SIZE:
        return error(404, "not_found", f"{path}: this tenant's log has no such tile (yet)")
    return web.Response(
        body=data[: width * merkle.HASH_SIZE],
        content_type="application/octet-stream",
        headers={"Cache-Control": "public, max-age=31536000, immutable"} if width == tiles.TILE_WIDTH else {},
    )


async def _consistency(request: web.Request) -> web.Response:
    old, new = _size_param(request, "old"), _size_param(request, "new")
    tenant = principal_of(request).tenant
    rows = await _fetch(request, "SELECT log_size FROM tenant_seq WHERE tenant = %s", (tenant,))
    size = int(rows[0][0]) if rows else 0
    if new is None:
        latest = await _latest(request, tenant)
        new = latest.size if latest is not None else 0
    if old is None:
        raise BadFilter("old", "give the older tree size, e.g. ?old=1")
    if not old <= new <= size:
        raise BadFilter("old", f"give old <= new <= {size} (this tenant's tree size); new defaults to the latest checkpoint's size")
    try:
        hash_at = await _hashes(request, tenant, new, tiles.tiles_for_consistency(old, new))
        proof = merkle.consistency_proof(old, new, hash_at)
    except (logdb.LogCorrupt, tiles.TileError) as exc:
        return _inconsistent(exc)
    return web.json_response({"old": old, "new": new, "proof": [_b64(h) for h in proof]})


# The latest checkpoint's columns, read with the event in one round trip (each an index probe).
_LATEST_COLUMNS = ", ".join(
    f"(SELECT {column} FROM log_checkpoints c WHERE c.tenant = events.tenant ORDER BY c.size DESC LIMIT 1)"
    for column in ("tenant", "size", "root", "note", "key", "created_at")
)


async def _proof(request: web.Request) -> web.Response:
    asked = _size_param(request, "size")
    found = await readable_event(
        request,
        "seq, doc, seals, to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), " + _LATEST_COLUMNS,
    )
    if isinstance(found, web.Response):
        return found
    seq, doc, seals, received, *latest = found
    tenant = principal_of(request).tenant
    index = seq - 1
    if asked is None:
        checkpoint = logdb.checkpoint_of(latest if latest[0] is not None else None)
    else:
        checkpoint = await _latest(request, tenant, asked)
    if checkpoint is None or checkpoint.size <= index:
        what = f"no checkpoint of size {asked}" if asked is not None else "no checkpoint covers this event yet"
        return error(404, "not_found", f"{what}: checkpoints are signed every integrity.checkpoint_seconds; try again shortly")
    entry = leaf_entry_owned(doc, received, seals or {})  # the row's own copy: not used after
    leaf = merkle.leaf_hash(entry)
    try:
        hash_at = await _hashes(request, tenant, checkpoint.size, tiles.tiles_for_proof(index, checkpoint.size))
        proof = merkle.inclusion_proof(index, checkpoint.size, hash_at)
        merkle.verify_inclusion(leaf, index, checkpoint.size, proof, checkpoint.root)  # never hand out a proof that fails
    except (logdb.LogCorrupt, tiles.TileError, merkle.ProofError) as exc:
        return _inconsistent(exc)
    text = TlogProof(index, tuple(proof), checkpoint.note, extra=entry).text()
    if request.query.get("format") == "tlog-proof":
        return _text(text)
    return web.json_response(
        {
            "event_id": request.match_info["id"],
            "seq": seq,
            "leaf_index": index,
            "tree_size": checkpoint.size,
            "leaf_hash": _b64(leaf),
            "entry": _b64(entry),
            "proof": [_b64(h) for h in proof],
            "root": _b64(checkpoint.root),
            "checkpoint": checkpoint.note,
            "checkpoint_time": checkpoint.created_at.isoformat(),
            "key": checkpoint.key,
            "tlog_proof": text,
            "verified": True,
        }
    )
