"""Tenants and tokens in PostgreSQL (migration 0002): the storage side of who may read what."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg

from otaudit_collector.core.tokens import ROLES, Principal, new_token, parse_token, secret_hash, secret_matches

__all__ = [
    "TenantRow",
    "TokenRow",
    "set_plan",
    "list_tenants",
    "create_token",
    "list_tokens",
    "revoke_token",
    "authenticate",
    "authenticate_async",
    "has_admin_token",
]

_UNKNOWN_HASH = secret_hash("no such token", "")


@dataclass(frozen=True, slots=True)
class TenantRow:
    tenant: str
    plan: str
    events: int


@dataclass(frozen=True, slots=True)
class TokenRow:
    id: str
    tenant: str
    role: str
    name: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None


def set_plan(conn: psycopg.Connection[Any], tenant: str, plan: str) -> str | None:
    """Give ``tenant`` ``plan``; returns the plan it had (None for a new tenant)."""
    row = conn.execute("SELECT plan FROM tenants WHERE tenant = %s FOR UPDATE", (tenant,)).fetchone()
    conn.execute(
        "INSERT INTO tenants (tenant, plan) VALUES (%s, %s)"
        " ON CONFLICT (tenant) DO UPDATE SET plan = excluded.plan, updated_at = now()",
        (tenant, plan),
    )
    return str(row[0]) if row else None


def list_tenants(conn: psycopg.Connection[Any]) -> list[TenantRow]:
    """Every tenant with a plan or with events, with its event count (from the commit sequence)."""
    rows = conn.execute(
        "SELECT coalesce(t.tenant, s.tenant), t.plan, coalesce(s.last_seq, 0)"
        " FROM tenants t FULL JOIN tenant_seq s ON s.tenant = t.tenant ORDER BY 1"
    ).fetchall()
    return [TenantRow(r[0], r[1] or "", int(r[2])) for r in rows]


def create_token(conn: psycopg.Connection[Any], *, tenant: str, role: str, name: str, pepper: str) -> tuple[str, str]:
    """Store a new token; returns (id, the token text, to be shown once)."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    token_id, secret, text = new_token()
    conn.execute(
        "INSERT INTO tokens (id, tenant, role, name, secret_hash) VALUES (%s, %s, %s, %s, %s)",
        (token_id, tenant, role, name, secret_hash(secret, pepper)),
    )
    return token_id, text


def list_tokens(conn: psycopg.Connection[Any], tenant: str | None = None, *, include_revoked: bool = False) -> list[TokenRow]:
    sql = "SELECT id, tenant, role, name, created_at, revoked_at FROM tokens WHERE true"
    params: list[Any] = []
    if tenant is not None:
        sql += " AND tenant = %s"
        params.append(tenant)
    if not include_revoked:
        sql += " AND revoked_at IS NULL"
    return [TokenRow(*row) for row in conn.execute(sql + " ORDER BY tenant, created_at", params).fetchall()]


def revoke_token(conn: psycopg.Connection[Any], token_id: str) -> bool:
    """Revoke a token by its id (or its full text); False when there is no such live token."""
    parsed = parse_token(token_id)
    key = parsed[0] if parsed else token_id
    row = conn.execute(
        "UPDATE tokens SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL RETURNING id", (key,)
    ).fetchone()
    return row is not None


# A token is found by its id alone (the token names no tenant), then its tenant's plan by the
# tenant: two lookups, not one join, so that on Citus the first reads the reference table
# `tokens` on the node it is asked and the second goes to the one shard of the tenant
# (storage/distribution.py).
_TOKEN_SQL = "SELECT tenant, role, name, secret_hash FROM tokens WHERE id = %s AND revoked_at IS NULL"
_PLAN_SQL = "SELECT plan FROM tenants WHERE tenant = %s"


def _checked(secret: str, pepper: str, row: tuple[Any, ...] | None) -> bool:
    """Check the secret against the row; costs one hash whether or not the id exists."""
    if row is None:
        secret_matches(secret, pepper, _UNKNOWN_HASH)
        return False
    return secret_matches(secret, pepper, bytes(row[3]))


def authenticate(conn: psycopg.Connection[Any], text: str, pepper: str) -> Principal | None:
    """The principal of a live token, or None."""
    parsed = parse_token(text)
    if parsed is None:
        return None
    row = conn.execute(_TOKEN_SQL, (parsed[0],)).fetchone()
    matched = _checked(parsed[1], pepper, row)
    if row is None or not matched:
        return None
    plan = conn.execute(_PLAN_SQL, (row[0],)).fetchone()
    return Principal(parsed[0], row[0], row[1], row[2], plan[0] if plan else None)


async def authenticate_async(conn: psycopg.AsyncConnection[Any], text: str, pepper: str) -> Principal | None:
    """``authenticate`` for the API's event loop."""
    parsed = parse_token(text)
    if parsed is None:
        return None
    cur = await conn.execute(_TOKEN_SQL, (parsed[0],))
    row = await cur.fetchone()
    matched = _checked(parsed[1], pepper, row)
    if row is None or not matched:
        return None
    cur = await conn.execute(_PLAN_SQL, (row[0],))
    plan = await cur.fetchone()
    return Principal(parsed[0], row[0], row[1], row[2], plan[0] if plan else None)


def has_admin_token(conn: psycopg.Connection[Any]) -> bool:
    return conn.execute("SELECT 1 FROM tokens WHERE role = 'admin' AND revoked_at IS NULL LIMIT 1").fetchone() is not None
