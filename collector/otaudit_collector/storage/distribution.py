"""How each table would be spread over the nodes of a distributed PostgreSQL (Citus).

Every table of the schema is in exactly one of the two, checked against the migrated schema by
tests/storage/test_tenant_keys.py:

* ``DISTRIBUTED``: split by tenant, every tenant's rows on one node, all these tables colocated.
  Such a table has a ``tenant`` column (text, NOT NULL) that leads its primary key and every
  unique index, and a foreign key to another distributed table includes it. A partitioned
  table's partitions (events' months) follow their table and are not listed.
* ``REFERENCE``: small, global tables copied whole to every node, each with why. A reference
  table has no foreign key to a distributed table (one from a distributed table to it is fine).

Nothing here runs against the database; it is the contract the migrations keep.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["DISTRIBUTION_COLUMN", "DISTRIBUTED", "REFERENCE"]

DISTRIBUTION_COLUMN: Final = "tenant"

DISTRIBUTED: Final[frozenset[str]] = frozenset(
    {
        "events",
        "event_ids",
        "tenant_seq",
        "tenants",
        "rejects",
        "export_jobs",
        "export_chunks",
        "log_tiles",
        "log_checkpoints",
        "log_pruned",
        "streams",
        "viewer_keys",
    }
)
"""Tables split by tenant, colocated with ``events``."""

REFERENCE: Final[Mapping[str, str]] = MappingProxyType(
    {
        "tokens": "looked up by the token's id before its tenant is known (the token text names none); few rows, rarely written",
        "server_keys": "a handful of install-wide secrets every collector reads",
        "catalog_titles": "the catalogs' event titles, one row per event type, joined into every tenant's CSV export",
        "retention_runs": "one row per retention run over all tenants; log_pruned's rows point at it",
        "schema_migrations": "which migrations the whole database has, one row per migration",
    }
)
"""Tables copied to every node, each with why it is not split by tenant."""
