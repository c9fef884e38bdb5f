"""Stored events as OCSF events: the ``ocsf`` record format of streams.

Pure. The Open Cybersecurity Schema Framework (https://schema.ocsf.io) is what SIEMs (Amazon
Security Lake, Splunk, Sentinel, QRadar, Google SecOps) read without a parser of their own.
Each event becomes one event of OCSF ``OCSF_VERSION`` in a class chosen by its catalog:

- the class: the event's ``ocsf.class`` in its catalog, else its category's, else
  ``api_activity`` (every audit event is an action through an application);
- the activity: the event's ``ocsf.activity``, else the first word of the event's name that
  names one of the class's activities (``addRole``: ``add`` is ``create``;
  ``org.user.password.changed``: a password ``change``), else ``other`` (99).

What goes where (every class): ``time`` (milliseconds) and ``metadata.original_time`` from
``occurred_at``; ``metadata``: the event's id (``uid``), name (``event_code``), ``seq``
(``sequence``), tenant (``tenant_uid``), ``received_at`` (``logged_time``, in milliseconds:
the exact value stays in ``unmapped``), the emitting
service (``log_provider``) and trace (``correlation_uid``); ``status_id``/``status`` from the
outcome (``success``: 1, else 2, the outcome itself in ``status_code``), ``status_detail``
from the reason, ``severity_id`` 1 (informational) for a success and 2 (low) otherwise;
``actor.user`` and ``actor.session`` from the actor and the client; ``src_endpoint`` (``ip``
when the client address is one, else ``hostname``) and ``http_request.user_agent``.

Per class: Account Change puts the target (the account acted on; the actor when there is no
target) in ``user``; Authentication puts the actor in ``user``; Entity Management puts the
target in ``entity`` with the old values of ``changes`` as its ``data`` and the new ones in
``entity_result``; Group Management puts the target in ``group`` (an event of either that has
no target is written as an API Activity: their required object would be empty); API Activity names the
event in ``api.operation`` (the service in ``api.service``) and lists the target and the
related objects in ``resources``.

Whatever of the document is not placed as it is in one of those attributes is kept, at its
place in the document, in ``unmapped`` (the category, ``changes``, ``details``, the actor's
roles, a type that became an OCSF caption, ...): every value of the event is in its OCSF event,
and :func:`to_ocsf` tracks what it used to say what is left.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CLASSES",
    "DEFAULT_CLASS",
    "OCSF_VERSION",
    "Hint",
    "OcsfClass",
    "activity_of",
    "check_hint",
    "to_ocsf",
]

OCSF_VERSION: Final = "1.5.0"
DEFAULT_CLASS: Final = "api_activity"
_PRODUCT: Final = "otaudit"


@dataclass(frozen=True, slots=True)
class OcsfClass:
    """An OCSF event class this mapping writes: its name (as the catalogs give it), ids and
    captions, and its activities by name (``password_change``) as (id, caption)."""

    name: str
    uid: int
    caption: str
    category_uid: int
    category_name: str
    activities: Mapping[str, tuple[int, str]]


_IAM = (3, "Identity & Access Management")
_APPLICATION = (6, "Application Activity")


def _activities(*captions: str) -> dict[str, tuple[int, str]]:
    """Activity ids 1, 2, ... in order of ``captions``, and ``other`` (99)."""
    out = {re.sub(r"\W+", "_", caption.lower()): (n, caption) for n, caption in enumerate(captions, 1)}
    out["other"] = (99, "Other")
    return out


CLASSES: Final[Mapping[str, OcsfClass]] = {
    c.name: c
    for c in (
        OcsfClass(
            "account_change",
            3001,
            "Account Change",
            *_IAM,
            _activities(
                "Create",
                "Enable",
                "Password Change",
                "Password Reset",
                "Disable",
                "Delete",
                "Attach Policy",
                "Detach Policy",
                "Lock",
                "MFA Factor Enable",
                "MFA Factor Disable",
                "Unlock",
            ),
        ),
        OcsfClass(
            "authentication",
            3002,
            "Authentication",
            *_IAM,
            _activities("Logon", "Logoff", "Authentication Ticket", "Service Ticket Request", "Service Ticket Renew", "Preauth"),
        ),
        OcsfClass(
            "entity_management",
            3004,
            "Entity Management",
            *_IAM,
            _activities(
                "Create",
                "Read",
                "Update",
                "Delete",
                "Move",
                "Enroll",
                "Unenroll",
                "Enable",
                "Disable",
                "Activate",
                "Deactivate",
                "Suspend",
                "Resume",
            ),
        ),
        OcsfClass(
            "group_management",
            3006,
            "Group Management",
            *_IAM,
            _activities("Assign Privileges", "Revoke Privileges", "Add User", "Remove User", "Delete", "Create"),
        ),
        OcsfClass("api_activity", 6003, "API Activity", *_APPLICATION, _activities("Create", "Read", "Update", "Delete")),
    )
}
"""The classes of ``OCSF_VERSION`` a catalog can name, by name."""

# A word of an event's name -> the activities it may mean, the likeliest first; the first that
# the class has wins. Words are lower case; the inflected forms are listed as they are met.
_WORDS: Final[Mapping[str, tuple[str, ...]]] = {
    **dict.fromkeys(("create", "created", "add", "added", "new", "register", "registered", "insert", "import"), ("create",)),
    **dict.fromkeys(("generate", "generated", "invite", "invited", "request", "requested"), ("create",)),
    **dict.fromkeys(("update", "updated", "edit", "edited", "change", "changed", "set", "modify", "modified"), ("update",)),
    **dict.fromkeys(("merge", "merged", "rename", "renamed", "resolve", "resolved", "toggle", "manage"), ("update",)),
    **dict.fromkeys(("resync", "regenerate", "regenerated", "reset", "resend", "resent"), ("update",)),
    **dict.fromkeys(("delete", "deleted", "remove", "removed", "destroy", "purge", "purged"), ("delete",)),
    **dict.fromkeys(("read", "view", "viewed", "get", "list", "export", "exported", "download", "downloaded"), ("read",)),
    **dict.fromkeys(("search", "show"), ("read",)),
    **dict.fromkeys(("enable", "enabled", "unarchive", "unarchived"), ("enable", "activate", "update")),
    **dict.fromkeys(("activate", "activated", "reactivate", "reactivated"), ("activate", "enable", "update")),
    **dict.fromkeys(("disable", "disabled", "archive", "archived"), ("disable", "deactivate", "update")),
    **dict.fromkeys(("deactivate", "deactivated"), ("deactivate", "disable", "update")),
    **dict.fromkeys(("block", "blocked", "blacklist", "blacklisted", "lock", "locked"), ("lock", "disable", "suspend", "update")),
    **dict.fromkeys(("unblock", "unblocked", "unlock", "unlocked"), ("unlock", "enable", "resume", "update")),
    **dict.fromkeys(("suspend", "suspended"), ("suspend", "disable", "update")),
    **dict.fromkeys(("resume", "resumed"), ("resume", "enable", "update")),
    **dict.fromkeys(("move", "moved"), ("move", "update")),
    **dict.fromkeys(("enroll", "enrolled"), ("enroll", "create")),
    **dict.fromkeys(("unenroll", "unenrolled"), ("unenroll", "delete")),
    **dict.fromkeys(("login", "logon", "signin"), ("logon", "read")),
    **dict.fromkeys(("access", "accessed"), ("logon",)),  # "siteAccess"; not "access-key.regenerated"
    **dict.fromkeys(("logout", "logoff", "signout"), ("logoff",)),
    **dict.fromkeys(("assign", "assigned", "grant", "granted"), ("assign_privileges", "add_user", "update")),
    **dict.fromkeys(("unassign", "unassigned", "revoke", "revoked"), ("revoke_privileges", "remove_user", "delete")),
}
_PAIRS: Final[Mapping[tuple[str, str], str]] = {
    ("sign", "in"): "signin",
    ("log", "in"): "login",
    ("sign", "out"): "signout",
    ("log", "out"): "logout",
}
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def _words(event: str) -> list[str]:
    """``resetUserPassword`` -> reset, user, password; ``org.user.auth.mfa`` -> org, user, auth, mfa."""
    words = [w.lower() for w in _WORD.findall(event)]
    out: list[str] = []
    for word in words:
        if out and (out[-1], word) in _PAIRS:
            out[-1] = _PAIRS[(out[-1], word)]
        else:
            out.append(word)
    return out


def activity_of(ocsf_class: OcsfClass, event: str) -> str:
    """The activity an event's name says, in the class's terms; ``other`` when no word says one."""
    words = _words(event)
    if "password" in words:
        if "reset" in words and "password_reset" in ocsf_class.activities:
            return "password_reset"
        if "password_change" in ocsf_class.activities:
            return "password_change"
    for word in words:
        for activity in _WORDS.get(word, ()):
            if activity in ocsf_class.activities:
                return activity
    return "other"


@dataclass(frozen=True, slots=True)
class Hint:
    """A catalog's ``ocsf`` hint for one event: its class, and its activity when the catalog names one."""

    class_name: str = DEFAULT_CLASS
    activity: str | None = None

    @staticmethod
    def resolve(category_hint: Mapping[str, Any] | None, event_hint: Mapping[str, Any] | None) -> Hint:
        """The event's hint over its category's (the category gives a class only)."""
        category_hint = category_hint or {}
        event_hint = event_hint or {}
        return Hint(
            str(event_hint.get("class") or category_hint.get("class") or DEFAULT_CLASS),
            event_hint.get("activity"),
        )


def check_hint(category_hint: Mapping[str, Any] | None, event_hint: Mapping[str, Any] | None) -> str | None:
    """What is wrong with an event's hints (after the catalog meta-schema checked their shape), or None."""
    hint = Hint.resolve(category_hint, event_hint)
    ocsf_class = CLASSES.get(hint.class_name)
    if ocsf_class is None:
        return f"unknown OCSF class {hint.class_name!r} (classes: {', '.join(CLASSES)})"
    if hint.activity is not None and hint.activity not in ocsf_class.activities:
        return (
            f"{hint.activity!r} is no activity of the OCSF class {hint.class_name!r}"
            f" (its activities: {', '.join(ocsf_class.activities)})"
        )
    return None


# -- the document, and what of it was used -----------------------------------------------


class _Document:
    """The stored document, read through :meth:`take`, which remembers what it gave."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc
        self.used: set[tuple[str, ...]] = set()

    def take(self, *path: str) -> Any:
        """The value at ``path`` (None when absent or null), counted as mapped."""
        node: Any = self.doc
        for part in path:
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        if node is not None:
            self.used.add(path)
        return node

    def text(self, *path: str) -> str | None:
        value = self.take(*path) if isinstance(self.peek(*path), str) else None
        return value if value else None

    def peek(self, *path: str) -> Any:
        node: Any = self.doc
        for part in path:
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    def rest(self) -> dict[str, Any]:
        """The document less what was taken (empty objects left out)."""
        return self._rest(self.doc, ())

    def _rest(self, node: Mapping[str, Any], at: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            path = (*at, key)
            if path in self.used or value is None:
                continue
            if isinstance(value, Mapping):
                kept = self._rest(value, path)
                if kept:
                    out[key] = kept
            else:
                out[key] = value
        return out


def _millis(text: Any) -> int | None:
    """An RFC 3339 time as milliseconds since the epoch (OCSF's timestamp_t)."""
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000) if when.year >= 1970 else None


def _present(value: Any) -> bool:
    return value is not None and value not in ({}, [])


def _drop_empty(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if _present(v)}


def _endpoint(address: str | None) -> dict[str, Any]:
    if address is None:
        return {}
    try:
        return {"ip": str(ipaddress.ip_address(address))}
    except ValueError:
        return {"hostname": address}


_USER_TYPES: Final = {"user": (1, "User"), "system": (3, "System")}
# a target's type -> ManagedEntity type_id and caption
_ENTITY_TYPES: Final = {
    "device": (1, "Device"),
    "user": (2, "User"),
    "account": (2, "User"),
    "group": (3, "Group"),
    "organization": (4, "Organization"),
    "org": (4, "Organization"),
    "policy": (5, "Policy"),
    "email": (6, "Email"),
}


def _typed(doc: _Document, path: tuple[str, str], known: Mapping[str, tuple[int, str]]) -> tuple[int | None, str | None]:
    """An OCSF ``type_id`` and ``type`` for the document's type at ``path``: a known one's
    caption (the document's own word stays in ``unmapped``), else 99 (Other) with the word."""
    kind = doc.peek(*path)
    if not isinstance(kind, str) or not kind:
        return None, None
    if kind.lower() in known:
        return known[kind.lower()]
    return 99, doc.text(*path)


def _actor_user(doc: _Document) -> dict[str, Any]:
    type_id, caption = _typed(doc, ("actor", "type"), _USER_TYPES)
    return _drop_empty(
        {
            "uid": doc.text("actor", "id"),
            "email_addr": doc.text("actor", "email"),
            "name": doc.text("actor", "name"),
            "type_id": type_id,
            "type": caption,
        }
    )


def _actor(doc: _Document) -> dict[str, Any]:
    return _drop_empty({"user": _actor_user(doc), "session": _drop_empty({"uid": doc.text("client", "session_id")})})


def _target_user(doc: _Document) -> dict[str, Any] | None:
    if not isinstance(doc.peek("target"), Mapping):
        return None
    return _drop_empty({"uid": doc.text("target", "id"), "name": doc.text("target", "name")}) or None


def _entity(doc: _Document, data: dict[str, Any] | None) -> dict[str, Any]:
    type_id, caption = _typed(doc, ("target", "type"), _ENTITY_TYPES)
    return _drop_empty(
        {
            "uid": doc.text("target", "id"),
            "name": doc.text("target", "name"),
            "type_id": type_id,
            "type": caption,
            "data": data,
        }
    )


def _change_sides(doc: _Document) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``changes`` as {field: old} and {field: new}, when each change names a field of its own."""
    changes = doc.peek("changes")
    if not isinstance(changes, list) or not changes:
        return None
    fields = [c.get("field") if isinstance(c, Mapping) and set(c) <= {"field", "old", "new"} else None for c in changes]
    if not all(isinstance(f, str) for f in fields) or len(set(fields)) != len(fields):
        return None
    doc.take("changes")
    return {c["field"]: c.get("old") for c in changes}, {c["field"]: c.get("new") for c in changes}


def _resources(doc: _Document) -> list[dict[str, Any]]:
    out = []
    if isinstance(doc.peek("target"), Mapping):
        out.append(
            _drop_empty({"uid": doc.text("target", "id"), "name": doc.text("target", "name"), "type": doc.text("target", "type")})
        )
    related = doc.peek("related")
    if (
        isinstance(related, list)
        and related
        and all(isinstance(r, Mapping) and set(r) <= {"type", "id", "name"} for r in related)
    ):
        doc.take("related")
        out.extend(
            _drop_empty(
                {k: r.get(key) for k, key in (("uid", "id"), ("name", "name"), ("type", "type")) if isinstance(r.get(key), str)}
            )
            for r in related
        )
    return [r for r in out if r]


_NEEDS_TARGET: Final = ("entity_management", "group_management")
"""Classes whose required object is the event's target: without one, the event is an API Activity."""
_REQUIRED: Final = {
    "account_change": {"user"},
    "authentication": {"user"},
    "entity_management": {"entity"},
    "group_management": {"group"},
    "api_activity": {"actor", "api", "src_endpoint"},
}
"""Each class's required attributes beyond the base event's: kept even when empty."""


def _class_part(ocsf_class: OcsfClass, doc: _Document) -> dict[str, Any]:
    """The attributes of the event's class."""
    if ocsf_class.name == "account_change":
        return {"user": _target_user(doc) or _actor_user(doc), "actor": _actor(doc)}
    if ocsf_class.name == "authentication":
        return {"user": _actor_user(doc), "session": _drop_empty({"uid": doc.text("client", "session_id")})}
    if ocsf_class.name == "entity_management":
        sides = _change_sides(doc)
        entity = _entity(doc, sides[0] if sides else None)
        result = None
        if sides:
            result = {k: v for k, v in entity.items() if k != "data"} | {"data": sides[1]}
        return {"entity": entity, "entity_result": result, "actor": _actor(doc)}
    if ocsf_class.name == "group_management":
        group = _drop_empty({"uid": doc.text("target", "id"), "name": doc.text("target", "name")})
        return {"group": group, "actor": _actor(doc)}
    # api_activity
    return {
        "actor": _actor(doc),
        "api": _drop_empty(
            {"operation": doc.text("event") or "", "service": _drop_empty({"name": doc.text("source", "service")})}
        ),
        "resources": _resources(doc),
        "src_endpoint": _endpoint(doc.text("client", "address")),
    }


def to_ocsf(
    document: Mapping[str, Any],
    seq: int,
    hint: Hint,
    *,
    title: str | None = None,
    product_version: str | None = None,
) -> dict[str, Any]:
    """The OCSF event of a stored event document (``seq``: its place in the tenant's trail)."""
    ocsf_class = CLASSES[hint.class_name]
    doc = _Document(document)
    event = doc.peek("event")
    activity = hint.activity
    if ocsf_class.name in _NEEDS_TARGET and not _target_user(doc):  # no object to name: an API Activity
        ocsf_class, activity = CLASSES[DEFAULT_CLASS], None
    activity = activity or activity_of(ocsf_class, event if isinstance(event, str) else "")
    activity_id, activity_name = ocsf_class.activities[activity]
    outcome = doc.text("outcome") or "success"
    succeeded = outcome == "success"
    occurred = doc.peek("occurred_at")
    received = doc.peek("received_at")
    time = _millis(occurred)
    if time is not None:
        doc.take("occurred_at")
    else:  # no readable time of the action: the time it was received stands in (and stays in unmapped)
        time = _millis(received) or 0
    logged = _millis(received)  # to the millisecond: received_at itself stays in unmapped
    client_address = doc.peek("client", "address")
    out: dict[str, Any] = {
        "class_uid": ocsf_class.uid,
        "class_name": ocsf_class.caption,
        "category_uid": ocsf_class.category_uid,
        "category_name": ocsf_class.category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": ocsf_class.uid * 100 + activity_id,
        "type_name": f"{ocsf_class.caption}: {activity_name}",
        "time": time,
        "severity_id": 1 if succeeded else 2,
        "severity": "Informational" if succeeded else "Low",
        "status_id": 1 if succeeded else 2,
        "status": "Success" if succeeded else "Failure",
        "status_code": outcome,
        "status_detail": doc.text("reason"),
        "message": doc.text("message") or title,
        "metadata": _drop_empty(
            {
                "version": OCSF_VERSION,
                "product": _drop_empty({"name": _PRODUCT, "vendor_name": _PRODUCT, "version": product_version}),
                "uid": doc.text("id"),
                "event_code": doc.text("event"),
                "sequence": seq,
                "tenant_uid": doc.text("tenant"),
                "original_time": occurred if time is not None and isinstance(occurred, str) else None,
                "logged_time": logged,
                "log_provider": doc.text("source", "service"),
                "correlation_uid": doc.text("trace", "trace_id"),
            }
        ),
    }
    out.update(_class_part(ocsf_class, doc))
    if "src_endpoint" not in out and isinstance(client_address, str) and client_address:
        out["src_endpoint"] = _endpoint(doc.text("client", "address"))
    user_agent = doc.text("client", "user_agent")
    if user_agent is not None:
        out["http_request"] = {"user_agent": user_agent}
    doc.used.add(("seq",))  # in metadata.sequence
    out["unmapped"] = doc.rest()
    required = _REQUIRED[ocsf_class.name]
    return {k: v for k, v in out.items() if k in required or _present(v)}
