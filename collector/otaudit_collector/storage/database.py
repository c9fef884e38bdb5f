"""Which PostgreSQL to use: the configured URL, or the embedded server in the data directory."""

from __future__ import annotations

from dataclasses import dataclass

from otaudit_collector.config import Settings
from otaudit_collector.storage.embedded import EmbeddedPostgres

__all__ = ["NoDatabase", "OpenDatabase", "open_database"]


class NoDatabase(Exception):
    """No embedded database where a command looked, and the command may not create one.

    Only ``otaudit serve`` creates the embedded database: any other command run from another
    folder would otherwise make an empty one there and report an empty trail as if it were true.
    """


@dataclass(slots=True)
class OpenDatabase:
    conninfo: str
    description: str
    embedded: EmbeddedPostgres | None = None

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.close()
            self.embedded = None


def open_database(settings: Settings, *, create: bool = False) -> OpenDatabase:
    """The database of ``settings``. The embedded one is created only with ``create`` (``otaudit serve``);
    otherwise a missing one raises ``NoDatabase``, whose message says where it looked and how to point elsewhere."""
    url = settings.get("database", "url")
    if url:
        return OpenDatabase(url, "external PostgreSQL (database.url)")
    data_dir = settings.path("database", "data_dir")
    embedded = EmbeddedPostgres(data_dir)
    if not create and not embedded.exists():
        raise NoDatabase(
            f"no otaudit database in {data_dir} (database.data_dir; nothing was created there). "
            "Run this command in the folder where 'otaudit serve' runs, or point it at the collector's data: "
            "--data-dir DIR or OTAUDIT_DATA_DIR for its embedded database, "
            "--database-url URL or OTAUDIT_DATABASE_URL for an external PostgreSQL."
        )
    conninfo = embedded.start()
    return OpenDatabase(conninfo, f"embedded PostgreSQL in {data_dir / 'postgres'}", embedded)
