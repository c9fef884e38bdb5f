"""``otaudit rejects list`` and ``otaudit rejects replay``: the quarantine, by hand.

Replay validates each open reject again with the catalogs in force now and stores those
that pass through the same writer as live traffic. Storage is idempotent, so a replay
interrupted between storing an event and marking its reject is safe to run again.

It applies the ingest's tenant rule too: a reject sent with an ingest token (``token_id``,
``token_tenant``) that names another tenant than its token's stays in quarantine, one that
names none gets the token's. A reject's bytes are decoded as they were kept
(``record_encoding``): a LogRecord message, or an OTLP/JSON record object (one that came as
JSON and could not be decoded), which goes through the JSON decoder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from google.protobuf.message import DecodeError

from otaudit_collector.app import catalog_dirs, ensure_partitions, policy_from
from otaudit_collector.config import Settings
from otaudit_collector.core.catalog import CatalogSet, load_catalogs
from otaudit_collector.core.errors import BadRequest
from otaudit_collector.core.normalize import Policy, normalize_request, storable_text
from otaudit_collector.core.otlp_json import decode_json
from otaudit_collector.core.otlp_model import DecodedRequest, wrap_record
from otaudit_collector.core.otlp_proto import decode_protobuf
from otaudit_collector.core.prepare import Prepared, prepare
from otaudit_collector.storage.database import open_database
from otaudit_collector.storage.migrate import apply_migrations
from otaudit_collector.storage.writer import Writer

__all__ = ["list_command", "replay_command"]


def list_command(settings: Settings, *, tenant: str | None, limit: int, include_replayed: bool, as_json: bool) -> int:
    database = open_database(settings)
    try:
        apply_migrations(database.conninfo)
        with psycopg.connect(database.conninfo) as conn:
            rows = conn.execute(
                # A record that named no tenant is filed under '' (migration 0016): listed as naming none.
                "SELECT id, received_at, nullif(tenant, ''), category, event, reasons, replayed_at, replayed_event_id, token_id"
                " FROM rejects WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s) AND (%(all)s OR replayed_at IS NULL)"
                " ORDER BY id LIMIT %(limit)s",
                {"tenant": tenant, "all": include_replayed, "limit": limit},
            ).fetchall()
    finally:
        database.close()
    for rid, received, rtenant, category, event, reasons, replayed_at, replayed_id, token_id in rows:
        if as_json:
            print(
                json.dumps(
                    {
                        "id": rid,
                        "received_at": received.isoformat(),
                        "tenant": rtenant,
                        "category": category,
                        "event": event,
                        "reasons": reasons,
                        "replayed_at": replayed_at.isoformat() if replayed_at else None,
                        "replayed_event_id": replayed_id,
                        "token_id": token_id,
                    }
                )
            )
        else:
            state = f" [replayed as {replayed_id}]" if replayed_at else ""
            sender = f" token={token_id}" if token_id else ""
            print(f"#{rid} {received:%Y-%m-%d %H:%M:%S} tenant={rtenant or '-'}{sender} {category or '-'}/{event or '-'}{state}")
            for reason in reasons:
                print(f"    {reason}")
    if not as_json:
        print(f"{len(rows)} reject(s)")
    return 0


def replay_command(settings: Settings, *, ids: Sequence[int], dry_run: bool) -> int:
    database = open_database(settings)
    try:
        apply_migrations(database.conninfo)
        ensure_partitions(database.conninfo, settings.get("ingest", "partitions_ahead_months"))
        return asyncio.run(_replay(settings, database.conninfo, list(ids), dry_run))
    finally:
        database.close()


async def _replay(settings: Settings, conninfo: str, ids: list[int], dry_run: bool) -> int:
    catalogs = load_catalogs(catalog_dirs(settings))
    policy = policy_from(settings)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT id, tenant, received_at, resource, record, record_encoding, token_tenant FROM rejects"
            " WHERE replayed_at IS NULL AND (cardinality(%s::bigint[]) = 0 OR id = ANY(%s::bigint[])) ORDER BY id",
            (ids, ids),
        )
        rows = await cur.fetchall()
        writer = Writer(conninfo, default_plan=settings.raw["default_plan"])
        await writer.start()
        stored = still = 0
        try:
            for rid, filed_under, received_at, resource_bytes, record_bytes, encoding, token_tenant in rows:
                stored_record = _Stored(bytes(resource_bytes), bytes(record_bytes), encoding, token_tenant)
                outcome = _revalidate(catalogs, policy, received_at, stored_record)
                if isinstance(outcome, str):
                    still += 1
                    print(f"#{rid} still rejected: {outcome}")
                    if not dry_run:  # the list then says why it is still there
                        await conn.execute(
                            "UPDATE rejects SET reasons = reasons || %s::text"
                            " WHERE tenant = %s AND id = %s AND NOT %s::text = ANY(reasons)",
                            (storable_text(outcome), filed_under, rid, storable_text(outcome)),
                        )
                    continue
                event_id, prepared = outcome
                if not dry_run:
                    await writer.submit(prepared)
                    await conn.execute(
                        "UPDATE rejects SET replayed_at = now(), replayed_event_id = %s WHERE tenant = %s AND id = %s",
                        (event_id, filed_under, rid),
                    )
                stored += 1
                print(f"#{rid} {'would be stored' if dry_run else 'stored'} as event {event_id}")
        finally:
            await writer.close()
    print(f"{stored} replayed{' (dry run)' if dry_run else ''}, {still} still rejected")
    return 0 if still == 0 else 1


@dataclasses.dataclass(frozen=True, slots=True)
class _Stored:
    """A quarantined record as kept: its resource and record bytes, how the record is encoded, its token's tenant."""

    resource: bytes
    record: bytes
    encoding: str
    token_tenant: str | None


def _revalidate(catalogs: CatalogSet, policy: Policy, received_at: datetime, stored: _Stored) -> str | tuple[str, Prepared]:
    """Run a quarantined record through the same path as live traffic, with today's catalogs and its token's tenant rule."""
    tenant = stored.token_tenant
    if tenant is not None:
        policy = dataclasses.replace(policy, default_tenant=tenant)
    received_ns = int(received_at.timestamp() * 1_000_000) * 1000
    try:
        decoded = _decode(stored, policy.max_depth)
    except DecodeError:
        return "the original record cannot be decoded"
    except BadRequest as exc:
        return str(exc.message)
    try:
        candidates = normalize_request(decoded, received_ns, policy)
    except BadRequest as exc:
        return str(exc.message)
    prepared = prepare(candidates, catalogs, received_ns, tenant=tenant)
    if prepared.rejects:
        return "; ".join(prepared.rejects[0].reasons)
    if prepared.refused:  # it names another tenant than its token's: what the ingest refuses, replay refuses
        return prepared.messages[0].split("): ", 1)[-1]
    doc = candidates[0].doc
    assert doc is not None
    return str(doc["id"]), prepared


def _decode(stored: _Stored, max_depth: int) -> DecodedRequest:
    """A one-record request of a quarantined record, decoded as its bytes were kept."""
    if stored.encoding != "json":
        return decode_protobuf(wrap_record(stored.resource, stored.record), max_depth)
    # The resource was kept as protobuf (it decoded when the request came), the record as its JSON object.
    resource_bytes, attributes, _ = decode_protobuf(wrap_record(stored.resource, b""), max_depth)[0]
    try:
        record: Any = json.loads(stored.record)
    except ValueError:
        raise DecodeError("not JSON") from None
    body = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [record]}]}]}, ensure_ascii=True)
    scopes = decode_json(body.encode("ascii"), max_depth)[0][2]
    return [(resource_bytes, attributes, scopes)]
