"""The embedded PostgreSQL server (the ``pgserver`` package) for development and the quick start."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedPostgres"]

log = logging.getLogger(__name__)


def _get_server() -> Any:
    """pgserver's ``get_server``, imported without its RuntimeDirWarning.

    pgserver asks platformdirs for a runtime folder (for its lock file) when it is imported;
    without XDG_RUNTIME_DIR (a container, ssh, cron) platformdirs warns on stderr and falls back
    to a private folder in /tmp, which works. The warning is no news to the operator and is not
    a JSON log line, so it is silenced here, where the collector imports pgserver.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", category=UserWarning)
        from pgserver.postgres_server import get_server
    return get_server


class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir/postgres``, started on first use, stopped on close.

    It listens on a Unix socket only. Several otaudit processes using the same data
    directory share one server; the last one to close stops it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._server: object | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    def exists(self) -> bool:
        """Whether a database cluster was made here already (by ``otaudit serve``)."""
        return (self.pgdata / "PG_VERSION").is_file()

    def start(self) -> str:
        # Imported here: it is only needed when no database URL is configured.
        get_server = _get_server()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        server = get_server(self.pgdata, cleanup_mode="stop")
        self._server = server
        uri: str = server.get_uri()
        return uri

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()  # type: ignore[attr-defined]
