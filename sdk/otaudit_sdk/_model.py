"""The values a caller passes to ``record()``: who acted, on what, and what changed."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from otaudit_sdk.attributes import ACTOR_TYPES

__all__ = ["Actor", "Target", "Change", "changes"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it, and from where.

    ``type`` is one of ``user``, ``service``, ``system``, ``api_key``, ``support``; a user or
    support actor needs an ``id`` or an ``email``. ``address``, ``user_agent`` and
    ``session_id`` say where the action came from (``web.actor_from_request`` fills them).
    """

    type: str
    id: str | None = None
    email: str | None = None
    name: str | None = None
    roles: tuple[str, ...] = ()
    address: str | None = None
    user_agent: str | None = None
    session_id: str | None = None

    def __post_init__(self) -> None:
        _check_text(self, ("id", "email", "name", "address", "user_agent", "session_id"))
        if self.type not in ACTOR_TYPES:
            raise ValueError(f"actor type {self.type!r} is not one of {', '.join(ACTOR_TYPES)}")
        if self.type in ("user", "support") and not (self.id or self.email):
            raise ValueError(f"a {self.type} actor needs an id or an email")
        roles: object = self.roles
        if isinstance(roles, str):
            raise TypeError("actor roles must be a sequence of strings, not one string")
        if not isinstance(roles, tuple):
            object.__setattr__(self, "roles", tuple(self.roles))
        if not all(isinstance(role, str) for role in self.roles):
            raise TypeError(f"actor roles must be strings, got {self.roles!r}")

    @classmethod
    def user(
        cls,
        id: str | None = None,
        *,
        email: str | None = None,
        name: str | None = None,
        roles: Iterable[str] = (),
        address: str | None = None,
        user_agent: str | None = None,
        session_id: str | None = None,
    ) -> Actor:
        return cls("user", id, email, name, tuple(roles), address, user_agent, session_id)

    @classmethod
    def service(cls, name: str, *, id: str | None = None, address: str | None = None) -> Actor:
        return cls("service", id, None, name, (), address)

    @classmethod
    def system(cls, name: str = "system") -> Actor:
        return cls("system", None, None, name)

    @classmethod
    def api_key(cls, id: str, *, name: str | None = None, address: str | None = None, user_agent: str | None = None) -> Actor:
        return cls("api_key", id, None, name, (), address, user_agent)

    @classmethod
    def support(cls, id: str | None = None, *, email: str | None = None, name: str | None = None) -> Actor:
        return cls("support", id, email, name)

    def at(self, address: str | None = None, *, user_agent: str | None = None, session_id: str | None = None) -> Actor:
        """The same actor acting from this address, user agent or session."""
        return dataclasses.replace(
            self,
            address=address if address is not None else self.address,
            user_agent=user_agent if user_agent is not None else self.user_agent,
            session_id=session_id if session_id is not None else self.session_id,
        )


@dataclass(frozen=True, slots=True)
class Target:
    """The object acted on: its type (``role``, ``license``, ``asset_group``), id and display name."""

    type: str
    id: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        _check_text(self, ("type", "id", "name"))
        if not self.type:
            raise ValueError("a target needs a type")


def _check_text(value: object, fields: tuple[str, ...]) -> None:
    for name in fields:
        got = getattr(value, name)
        if got is not None and not isinstance(got, str):
            raise TypeError(f"{type(value).__name__}.{name} must be a string, got {type(got).__name__} {got!r}")


_ABSENT: Final = object()


@dataclass(frozen=True, slots=True)
class Change:
    """One changed field: its old and new value. A withheld value (a secret) is not sent."""

    field: str
    old: Any = _ABSENT
    new: Any = _ABSENT
    id: str | None = None

    def as_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field}
        if self.id is not None:
            out["id"] = self.id
        if self.old is not _ABSENT:
            out["old"] = self.old
        if self.new is not _ABSENT:
            out["new"] = self.new
        return out


def changes(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    *,
    fields: Iterable[str] | None = None,
    withhold: Collection[str] = (),
    id: str | None = None,
) -> list[Change]:
    """The fields whose values differ between ``before`` and ``after``, as old/new pairs.

    A key present on one side only is a change from or to ``None``. ``fields`` limits the
    comparison to those keys (in that order); otherwise keys are compared in the order
    they first appear. Fields named in ``withhold`` (passwords, secrets) are reported as
    changed with their values left out. ``id`` names the item in a bulk change.
    """
    old_map = before or {}
    new_map = after or {}
    names = list(dict.fromkeys([*old_map, *new_map])) if fields is None else list(fields)
    out: list[Change] = []
    for name in names:
        old = old_map.get(name)
        new = new_map.get(name)
        if old == new and type(old) is type(new):
            continue
        if name in withhold:
            out.append(Change(name, id=id))
        else:
            out.append(Change(name, old, new, id))
    return out
