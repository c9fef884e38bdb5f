"""Plans: which categories a tenant may read, and how far back (contract.md, "Plans").

Pure. Events of every category are stored whatever the plan; these functions decide what
a read may return, so that an upgrade reveals history at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Plan",
    "PlanForbids",
    "plans_from",
    "allowed_categories",
    "check_readable",
    "upgrade_for",
    "clamp_since",
    "window_start",
    "in_window",
]


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    categories: tuple[str, ...]  # "*" for every loaded category
    retention_days: int | None
    query_window_days: int | None
    description: str = ""

    def reads(self, category: str) -> bool:
        return "*" in self.categories or category in self.categories


class PlanForbids(Exception):
    """A read names a category the tenant's plan does not include."""

    def __init__(self, category: str, plan: Plan, upgrade: str | None) -> None:
        self.category = category
        self.plan = plan
        self.upgrade = upgrade
        where = f"; the '{upgrade}' plan includes it" if upgrade else "; no plan includes it"
        super().__init__(f"category '{category}' is not in the '{plan.name}' plan{where}")


def plans_from(config: Mapping[str, Any]) -> dict[str, Plan]:
    """The ``plans`` section of the configuration as Plan values, in their order."""
    return {
        name: Plan(
            name,
            tuple(spec["categories"]),
            spec.get("retention_days"),
            spec.get("query_window_days"),
            spec.get("description", ""),
        )
        for name, spec in config.items()
    }


def allowed_categories(plan: Plan, plans: Mapping[str, Plan], loaded: Iterable[str], requested: Iterable[str] = ()) -> list[str]:
    """The categories a read may return: those requested (each must be in the plan, else
    ``PlanForbids`` naming the first plan that includes it), or all the plan reads."""
    asked = list(dict.fromkeys(requested))
    for category in asked:
        check_readable(category, plan, plans)
    if asked:
        return asked
    return sorted(c for c in loaded if plan.reads(c))


def upgrade_for(category: str, plans: Mapping[str, Plan]) -> str | None:
    """The first plan (in configuration order) that reads ``category``."""
    return next((p.name for p in plans.values() if p.reads(category)), None)


def check_readable(category: str, plan: Plan, plans: Mapping[str, Plan]) -> None:
    """Raise ``PlanForbids`` (naming the plan that would allow it) unless ``plan`` reads ``category``."""
    if not plan.reads(category):
        raise PlanForbids(category, plan, upgrade_for(category, plans))


def window_start(plan: Plan, now: dt.datetime) -> dt.datetime | None:
    """The oldest ``occurred_at`` the plan's query window lets any read return; None: no window."""
    if plan.query_window_days is None:
        return None
    return now - dt.timedelta(days=plan.query_window_days)


def in_window(occurred_at: dt.datetime, plan: Plan, now: dt.datetime) -> bool:
    """Whether a read may return an event that occurred at ``occurred_at``: every read route obeys the window."""
    earliest = window_start(plan, now)
    return earliest is None or occurred_at >= earliest


def clamp_since(since: dt.datetime | None, plan: Plan, now: dt.datetime) -> tuple[dt.datetime | None, bool]:
    """``since`` limited to the plan's query window: (the since to use, whether it was clamped)."""
    earliest = window_start(plan, now)
    if earliest is None:
        return since, False
    if since is None or since < earliest:
        return earliest, since is not None
    return since, False
