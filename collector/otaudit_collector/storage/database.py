"""Which PostgreSQL to use: the configured URL, or the embedded server in the data directory."""

from __future__ import annotations

from dataclasses import dataclass

from otaudit_collector.config import Settings
from otaudit_collector.storage.embedded import EmbeddedPostgres

__all__ = ["OpenDatabase", "open_database"]


@dataclass(slots=True)
class OpenDatabase:
    conninfo: str
    description: str
    embedded: EmbeddedPostgres | None = None

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.close()
            self.embedded = None


def open_database(settings: Settings) -> OpenDatabase:
    url = settings.get("database", "url")
    if url:
        return OpenDatabase(url, "external PostgreSQL (database.url)")
    data_dir = settings.path("database", "data_dir")
    embedded = EmbeddedPostgres(data_dir)
    conninfo = embedded.start()
    return OpenDatabase(conninfo, f"embedded PostgreSQL in {data_dir / 'postgres'}", embedded)
