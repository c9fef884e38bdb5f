"""An operator's command recorded in the tenant's own trail: ``otaudit export --tenant`` and ``otaudit import``.

These commands go straight to the database, past the API that records every read; so each records
itself, like the API does (``selfaudit``): an OTLP/JSON event through the same ``Ingestor`` as any
service's events, validated against the loaded catalogs and stored by a ``Writer``. The actor is the
person at the terminal (``user``, ``USER@HOST (otaudit COMMAND)``); the service ``otaudit-collector``.
"""

from __future__ import annotations

import getpass
import os
import socket
from typing import Any

from otaudit_collector.core.catalog import CatalogSet
from otaudit_collector.core.tokens import Principal
from otaudit_collector.pipeline import Ingestor
from otaudit_collector.selfaudit import Access, SelfAudit
from otaudit_collector.storage.writer import Writer

__all__ = ["OperatorAudit", "operator_access"]


def _operator() -> str:
    """``USER@HOST``; a process with no user name (a container's bare uid) is named by its uid."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid-{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def operator_access(tenant: str, command: str) -> Access:
    """Who runs ``command`` (``otaudit export``) on ``tenant``'s trail, as a self-audit event's actor and client."""
    who = _operator()
    principal = Principal(token_id=who, tenant=tenant, role="operator", name=f"{who} ({command})")
    return Access(principal, None, f"otaudit-cli/{os.getpid()}", actor_type="user")


class OperatorAudit:
    """Records a command's events through ``writer`` (started by the caller, and closed by it after ``close``)."""

    def __init__(self, writer: Writer, settings: Any, catalogs: CatalogSet, tenant: str, command: str) -> None:
        from otaudit_collector.app import policy_from

        self.access = operator_access(tenant, command)
        self._ingestor = Ingestor(
            writer=writer,
            catalogs=lambda: catalogs,
            policy=policy_from(settings),
            max_concurrent_requests=1,
            retry_after_seconds=1,
            seal=bool(settings.get("integrity", "enabled")),
        )
        self._audit = SelfAudit(self._ingestor)

    def check(self, **fields: Any) -> None:
        """Raise ``selfaudit.Unrecorded`` when the loaded catalogs would refuse the event; stores nothing.
        Asked before the command changes anything, so that nothing happens that cannot be recorded."""
        self._audit.check(access=self.access, **fields)

    async def record(self, **fields: Any) -> str:
        """Record one event (``SelfAudit.record``'s fields but ``access``); its id once committed."""
        return await self._audit.record(access=self.access, **fields)

    def close(self) -> None:
        self._ingestor.close()
