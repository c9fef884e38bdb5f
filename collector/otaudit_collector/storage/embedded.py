"""The embedded PostgreSQL server (the ``pgserver`` package) for development and the quick start."""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["EmbeddedPostgres"]

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir/postgres``, started on first use, stopped on close.

    It listens on a Unix socket only. Several otaudit processes using the same data
    directory share one server; the last one to close stops it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._server: object | None = None

    def start(self) -> str:
        # Imported here: it is only needed when no database URL is configured.
        from pgserver.postgres_server import get_server

        pgdata = self.data_dir / "postgres"
        pgdata.mkdir(parents=True, exist_ok=True)
        server = get_server(pgdata, cleanup_mode="stop")
        self._server = server
        uri: str = server.get_uri()
        return uri

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()  # type: ignore[attr-defined]
