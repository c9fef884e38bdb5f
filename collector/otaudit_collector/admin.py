"""``otaudit tenant ...`` and ``otaudit token ...``: tenants' plans and access tokens, by hand.

A new token is printed once, alone on its line (``--json`` for scripts), and is stored
only as a keyed hash; nothing here writes a token to a log.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from otaudit_collector._text import plural
from otaudit_collector.config import Settings
from otaudit_collector.core.tokens import parse_token
from otaudit_collector.storage import access
from otaudit_collector.storage.database import open_database
from otaudit_collector.storage.migrate import apply_migrations

__all__ = [
    "tenant_set_command",
    "tenant_list_command",
    "token_create_command",
    "token_list_command",
    "token_revoke_command",
    "bootstrap_admin_token",
]

_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")


@contextmanager
def _connection(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    database = open_database(settings)
    try:
        apply_migrations(database.conninfo)
        with psycopg.connect(database.conninfo) as conn:
            yield conn
    finally:
        database.close()


def _check_tenant(tenant: str) -> str | None:
    if _TENANT.fullmatch(tenant):
        return None
    return (
        f"tenant {tenant!r} is not a valid tenant id: a letter or digit, then up to 127 of letters, digits, '_', '.', ':' or '-'"
    )


def _fail(message: str) -> int:
    print(f"otaudit: {message}", file=sys.stderr)
    return 2


def tenant_set_command(settings: Settings, tenant: str, plan: str) -> int:
    plans = settings.raw["plans"]
    if plan not in plans:
        return _fail(f"plan {plan!r} is not one of the configured plans ({', '.join(plans)})")
    if problem := _check_tenant(tenant):
        return _fail(problem)
    with _connection(settings) as conn:
        before = access.set_plan(conn, tenant, plan)
    change = "new tenant" if before is None else f"was {before}"
    print(f"tenant {tenant}: plan {plan} ({change})")
    return 0


def tenant_list_command(settings: Settings, *, as_json: bool) -> int:
    default = settings.raw["default_plan"]
    with _connection(settings) as conn:
        rows = access.list_tenants(conn)
    for row in rows:
        plan = row.plan or default
        if as_json:
            print(json.dumps({"tenant": row.tenant, "plan": plan, "plan_set": bool(row.plan), "events": row.events}))
        else:
            print(f"{row.tenant}\t{plan}{'' if row.plan else ' (default)'}\t{plural(row.events, 'event')}")
    if not as_json:
        print(f"{len(rows)} tenant(s)")
    return 0


def token_create_command(settings: Settings, *, tenant: str, role: str, name: str | None, as_json: bool) -> int:
    if problem := _check_tenant(tenant):
        return _fail(problem)
    with _connection(settings) as conn:
        token_id, text = access.create_token(
            conn, tenant=tenant, role=role, name=name or f"{role} token", pepper=settings.token_pepper
        )
    if as_json:
        print(json.dumps({"id": token_id, "tenant": tenant, "role": role, "token": text}))
    else:
        print(f"{role} token {token_id} for tenant {tenant} (shown once: keep it now):", file=sys.stderr)
        print(text)
    return 0


def token_list_command(settings: Settings, *, tenant: str | None, include_revoked: bool, as_json: bool) -> int:
    with _connection(settings) as conn:
        rows = access.list_tokens(conn, tenant, include_revoked=include_revoked)
    for row in rows:
        if as_json:
            print(
                json.dumps(
                    {
                        "id": row.id,
                        "tenant": row.tenant,
                        "role": row.role,
                        "name": row.name,
                        "created_at": row.created_at.isoformat(),
                        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
                    }
                )
            )
        else:
            state = f" revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else ""
            print(f"{row.id}\t{row.tenant}\t{row.role}\t{row.name}\tcreated {row.created_at:%Y-%m-%d}{state}")
    if not as_json:
        print(f"{len(rows)} token(s)")
    return 0


def token_revoke_command(settings: Settings, token_id: str) -> int:
    with _connection(settings) as conn:
        revoked = access.revoke_token(conn, token_id)
    if not revoked:
        return _fail(f"no live token {token_id!r} (see 'otaudit token list')")
    parsed = parse_token(token_id)
    print(f"token {parsed[0] if parsed else token_id} revoked")
    return 0


def bootstrap_admin_token(conninfo: str, settings: Settings) -> tuple[str, str] | None:
    """At start: with no live admin token at all, make one for ``auth.bootstrap_tenant``.

    Returns (tenant, token text) to print once, or None when an admin token exists.
    Concurrent starts are serialized by an advisory lock, so only one prints a token.
    """
    tenant = str(settings.get("auth", "bootstrap_tenant"))
    with psycopg.connect(conninfo) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('otaudit bootstrap token'))")
        if access.has_admin_token(conn):
            return None
        _token_id, text = access.create_token(
            conn, tenant=tenant, role="admin", name="bootstrap admin", pepper=settings.token_pepper
        )
    return tenant, text
