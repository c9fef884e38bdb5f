"""The attribute names of the otaudit wire contract (shared/design/contract.md).

OpenTelemetry semantic-convention names where one exists; the rest under ``audit.*``.
"""

from typing import Final

__all__ = [
    "RECORD_UID",
    "CATEGORY",
    "TENANT_ID",
    "OUTCOME",
    "ACTOR_TYPE",
    "USER_ID",
    "USER_EMAIL",
    "USER_NAME",
    "USER_ROLES",
    "CLIENT_ADDRESS",
    "USER_AGENT",
    "SESSION_ID",
    "TARGET_TYPE",
    "TARGET_ID",
    "TARGET_NAME",
    "CHANGES",
    "RELATED",
    "MAX_RELATED",
    "DETAILS",
    "REASON",
    "SEQUENCE",
    "OUTCOMES",
    "ACTOR_TYPES",
]

RECORD_UID: Final = "log.record.uid"
CATEGORY: Final = "audit.category"
TENANT_ID: Final = "audit.tenant.id"
OUTCOME: Final = "audit.outcome"
ACTOR_TYPE: Final = "audit.actor.type"
USER_ID: Final = "user.id"
USER_EMAIL: Final = "user.email"
USER_NAME: Final = "user.name"
USER_ROLES: Final = "user.roles"
CLIENT_ADDRESS: Final = "client.address"
USER_AGENT: Final = "user_agent.original"
SESSION_ID: Final = "session.id"
TARGET_TYPE: Final = "audit.target.type"
TARGET_ID: Final = "audit.target.id"
TARGET_NAME: Final = "audit.target.name"
CHANGES: Final = "audit.changes"
RELATED: Final = "audit.related"
DETAILS: Final = "audit.details"
REASON: Final = "audit.reason"
SEQUENCE: Final = "audit.sequence"

MAX_RELATED: Final = 32
"""The collector rejects an event naming more related objects."""

OUTCOMES: Final = ("success", "failure", "denied")
ACTOR_TYPES: Final = ("user", "service", "system", "api_key", "support")
