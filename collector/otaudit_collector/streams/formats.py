"""A stream's records in its format: ``otaudit`` (the stored document, as read), ``ocsf`` or ``cef``.

The delivery loop reads records as the stored document's JSON text; :func:`render` rewrites
them for a stream of another format before they reach the transport. The OCSF class and
activity of each event come from the catalogs in force when the batch is read (an event
whose catalog is gone since it was stored is written as an API Activity), and a record whose
text is not a JSON object (it cannot be: the database wrote it) raises ``ValueError``: the
loop reports it as the stream's error and retries, it never skips a record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from otaudit_collector import __version__
from otaudit_collector.core.catalog import CatalogSet
from otaudit_collector.core.cef import cef_line
from otaudit_collector.core.ocsf import Hint, to_ocsf
from otaudit_collector.streams.transport import Record

__all__ = ["render"]


def _document(record: Record) -> dict[str, Any]:
    document: Any = json.loads(record.text)
    if not isinstance(document, dict):
        raise ValueError(f"record seq {record.seq} is not a JSON object; it cannot be written in another format")
    return document


def _ocsf(record: Record, catalogs: CatalogSet | None) -> Record:
    document = _document(record)
    definition = catalogs.event(document.get("category"), document.get("event")) if catalogs is not None else None
    event = to_ocsf(
        document,
        record.seq,
        definition.ocsf if definition is not None else Hint(),
        title=definition.title if definition is not None else None,
        product_version=__version__,
    )
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return Record(record.seq, record.id, text, document)


def _cef(record: Record, catalogs: CatalogSet | None) -> Record:
    document = _document(record)
    definition = catalogs.event(document.get("category"), document.get("event")) if catalogs is not None else None
    title = definition.title if definition is not None else None
    return Record(record.seq, record.id, cef_line(document, record.seq, title=title, product_version=__version__), document)


def render(records: Sequence[Record], fmt: str, catalogs: Callable[[], CatalogSet | None]) -> Sequence[Record]:
    """``records`` in the format ``fmt`` (``otaudit``: as they are)."""
    if fmt == "otaudit":
        return records
    if fmt in _RENDER:
        loaded = catalogs()
        return [_RENDER[fmt](record, loaded) for record in records]
    raise ValueError(f"unknown record format {fmt!r}")


_RENDER = {"ocsf": _ocsf, "cef": _cef}
