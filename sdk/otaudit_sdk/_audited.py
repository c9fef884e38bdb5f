"""``audited``: record an event for a block of code, with its outcome.

As a context manager the block may add details, changes, a target, related objects or a
reason as it learns them; as a decorator (of a function or a coroutine function) each call records
one event. One ``audited(...)`` object may be entered by several threads or tasks at
once: each gets its own scope. If the block raises, the event
is recorded with outcome ``failure`` (``denied`` for the exceptions in ``denied_on``) and
the exception's text as the reason, and the exception propagates unchanged.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from otaudit_sdk._model import Actor, Change, Target

__all__ = ["Audited", "AuditScope"]

P = ParamSpec("P")
R = TypeVar("R")

_REASON_CHARS = 1000


class AuditScope:
    """What the audited block may fill in before the event is recorded."""

    def __init__(
        self,
        target: Target | None,
        details: Mapping[str, Any] | None,
        changes: Sequence[Change] | None,
        related: Sequence[Target] | None = None,
    ) -> None:
        self.target = target
        self.related: list[Target] = list(related or [])
        """Other objects the event concerns (``Target`` with an id); the block may append to it."""
        self.details: dict[str, Any] = dict(details or {})
        self.changes: list[Change | Mapping[str, Any]] = list(changes or [])
        self.reason: str | None = None
        self.outcome: str | None = None
        self.id: str | None = None
        """The recorded event's id, once the block has ended."""


class Audited:
    def __init__(
        self,
        record: Callable[..., str],
        event: str,
        *,
        category: str,
        actor: Actor,
        target: Target | None = None,
        details: Mapping[str, Any] | None = None,
        changes: Sequence[Change] | None = None,
        related: Sequence[Target] | None = None,
        denied_on: tuple[type[BaseException], ...] = (PermissionError,),
        **options: Any,
    ) -> None:
        self._record = record
        self._event = event
        self._fixed = {"category": category, "actor": actor, **options}
        self._start = (target, details, changes, related)
        self._denied_on = denied_on
        self._scopes: contextvars.ContextVar[tuple[AuditScope, ...]] = contextvars.ContextVar("otaudit_scopes", default=())

    def __enter__(self) -> AuditScope:
        scope = AuditScope(*self._start)
        self._scopes.set((*self._scopes.get(), scope))
        return scope

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        *outer, scope = self._scopes.get()
        self._scopes.set(tuple(outer))
        outcome = scope.outcome or "success"
        reason = scope.reason
        if exc is not None:
            outcome = "denied" if isinstance(exc, self._denied_on) else "failure"
            reason = reason or (f"{type(exc).__name__}: {exc}"[:_REASON_CHARS])
        scope.id = self._record(
            self._event,
            target=scope.target,
            details=scope.details or None,
            changes=scope.changes or None,
            related=scope.related or None,
            outcome=outcome,
            reason=reason,
            **self._fixed,
        )

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(func):
            return self._wrap_coroutine(func)  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with self:
                return func(*args, **kwargs)

        return wrapper

    def _wrap_coroutine(self, func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with self:  # the event is recorded when the coroutine ends, not when it is created
                return await func(*args, **kwargs)

        return wrapper
