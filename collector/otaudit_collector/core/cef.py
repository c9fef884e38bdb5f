"""Stored events as CEF lines: the ``cef`` record format of syslog streams.

Pure. ArcSight's Common Event Format, version 0, which QRadar, ArcSight, Sentinel's CEF
connector and most SIEMs read from syslog::

    CEF:0|otaudit|otaudit|<version>|<event>|<title>|<severity>|<key=value ...>

Header fields escape ``\\`` and ``|`` with a backslash; extension values escape ``\\`` and
``=``, and write line breaks as ``\\n`` and ``\\r``; a line never holds a raw line break.
The severity is 3 (low) for a success and 6 (medium) otherwise.

The extension uses CEF's own keys where one fits: ``externalId`` (the event id), ``rt``
(received, ms since the epoch), ``start`` (occurred, ms), ``cat`` (category), ``act`` (event),
``outcome``, ``reason``, ``suid`` and ``suser`` (the actor's id and name, else email),
``spriv`` (the actor's roles), ``src`` (the client address when it is an IP) or ``shost``,
``requestClientApplication`` (user agent), ``sourceServiceName`` (the emitting service) and
``msg`` (the message, else the catalog's title). Custom fields, each with its label: ``cn1``
the ``seq``, ``cs1`` the tenant, ``cs2`` the actor's email, ``cs3``/``cs4``/``cs5`` the target's
type, id and name, and ``cs6`` (label ``otaudit``) the rest of the document as compact JSON
(changes, details, related objects, the actor's type, the session, ...), so that nothing of
the event is lost but the times' digits past the millisecond.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["VENDOR", "cef_line", "escape_header", "escape_value"]

VENDOR: Final = "otaudit"
_CARRIED: Final = frozenset(
    {
        ("id",),
        ("seq",),
        ("tenant",),
        ("category",),
        ("event",),
        ("occurred_at",),
        ("received_at",),
        ("outcome",),
        ("reason",),
        ("message",),
        ("actor", "id"),
        ("actor", "name"),
        ("actor", "email"),
        ("actor", "roles"),
        ("client", "address"),
        ("client", "user_agent"),
        ("target", "type"),
        ("target", "id"),
        ("target", "name"),
        ("source", "service"),
    }
)
"""The document's paths the header and the named keys carry as they are (times to the ms:
``occurred_at`` and ``received_at`` are carried by ``start`` and ``rt`` and left out of cs6)."""


def escape_header(text: str) -> str:
    flat = text.replace("\r", " ").replace("\n", " ")
    return flat.replace("\\", "\\\\").replace("|", "\\|")


def escape_value(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("=", "\\=")
    return escaped.replace("\r", "\\r").replace("\n", "\\n")


def _millis(text: Any) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(when.timestamp() * 1000) if when.tzinfo is not None else None


def _text(node: Any, *path: str) -> str | None:
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node if isinstance(node, str) and node else None


def _rest(node: Mapping[str, Any], at: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the header and the named keys do not carry: the rest of the document, in its shape."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        path = (*at, key)
        if path in _CARRIED or value is None:
            continue
        if isinstance(value, Mapping):
            kept = _rest(value, path)
            if kept:
                out[key] = kept
        else:
            out[key] = value
    return out


def cef_line(document: Mapping[str, Any], seq: int, *, title: str | None = None, product_version: str = "0") -> str:
    """The stored event ``document`` as one CEF line (no line break in it)."""
    event = _text(document, "event") or "unknown"
    outcome = _text(document, "outcome") or "success"
    header = [
        "CEF:0",
        VENDOR,
        VENDOR,
        product_version,
        event,
        title or event,
        "3" if outcome == "success" else "6",
    ]
    pairs: list[tuple[str, Any]] = [
        ("externalId", _text(document, "id")),
        ("rt", _millis(document.get("received_at"))),
        ("start", _millis(document.get("occurred_at"))),
        ("cat", _text(document, "category")),
        ("act", event),
        ("outcome", outcome),
        ("reason", _text(document, "reason")),
        ("suid", _text(document, "actor", "id")),
        ("suser", _text(document, "actor", "name") or _text(document, "actor", "email")),
    ]
    roles = document.get("actor", {}).get("roles") if isinstance(document.get("actor"), Mapping) else None
    if isinstance(roles, list) and roles:
        pairs.append(("spriv", ",".join(str(r) for r in roles)))
    address = _text(document, "client", "address")
    if address is not None:
        try:
            pairs.append(("src", str(ipaddress.ip_address(address))))
        except ValueError:
            pairs.append(("shost", address))
    pairs += [
        ("requestClientApplication", _text(document, "client", "user_agent")),
        ("sourceServiceName", _text(document, "source", "service")),
        ("msg", _text(document, "message") or title),
        ("cn1", seq),
        ("cn1Label", "seq"),
        ("cs1", _text(document, "tenant")),
        ("cs1Label", "tenant"),
    ]
    for n, (value, label) in enumerate(
        (
            (_text(document, "actor", "email"), "actor_email"),
            (_text(document, "target", "type"), "target_type"),
            (_text(document, "target", "id"), "target_id"),
            (_text(document, "target", "name"), "target_name"),
        ),
        2,
    ):
        if value is not None:
            pairs += [(f"cs{n}", value), (f"cs{n}Label", label)]
    rest = _rest(document)
    if rest:
        pairs += [("cs6", json.dumps(rest, ensure_ascii=False, separators=(",", ":"))), ("cs6Label", "otaudit")]
    extension = " ".join(f"{key}={escape_value(str(value))}" for key, value in pairs if value is not None)
    return "|".join(escape_header(part) for part in header) + "|" + extension
