"""Viewer keys in PostgreSQL (migration 0015): each tenant's key generation and its plan, what
checking a viewer token needs (core/viewer_tokens.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

__all__ = ["TenantKey", "rotate", "tenant_key"]

Conn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True, slots=True)
class TenantKey:
    generation: int
    plan: str | None  # None: the tenant has no plan of its own (the default applies)


async def tenant_key(conn: Conn, tenant: str) -> TenantKey:
    cur = await conn.execute(
        "SELECT (SELECT generation FROM viewer_keys WHERE tenant = %(t)s), (SELECT plan FROM tenants WHERE tenant = %(t)s)",
        {"t": tenant},
    )
    row = await cur.fetchone()
    assert row is not None
    return TenantKey(int(row[0] or 1), row[1])


async def rotate(conn: Conn, tenant: str, by: str) -> int:
    """Move the tenant's generation on (every viewer token made before stops working); the new one."""
    cur = await conn.execute(
        "INSERT INTO viewer_keys (tenant, generation, rotated_by) VALUES (%s, 2, %s)"
        " ON CONFLICT (tenant) DO UPDATE SET generation = viewer_keys.generation + 1, rotated_at = now(),"
        " rotated_by = excluded.rotated_by RETURNING generation",
        (tenant, by),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])
