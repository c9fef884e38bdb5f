"""Ingest errors and what the client should do next, mapped to gRPC and HTTP in one place.

Three families, as in the OpenTelemetry Collector's receivers:

- permanent: the request itself is wrong (cannot be decoded, too large, wrong content
  type). Retrying the same bytes cannot succeed. gRPC INVALID_ARGUMENT or
  RESOURCE_EXHAUSTED without retry info, HTTP 400 / 413 / 415.
- retryable: the collector cannot make the request durable right now (database away,
  too much in flight). The client keeps the data and retries after ``retry_after``.
  gRPC UNAVAILABLE with RetryInfo, HTTP 503 or 429 with Retry-After.
- refused: the credentials are missing, unknown or not meant for ingest. The data is
  fine, the client's setup is not. gRPC UNAUTHENTICATED / PERMISSION_DENIED, HTTP 401 / 403.

Per-record problems (a record that fails its catalog) are not errors of the request:
they travel in ``partial_success`` and are quarantined.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

__all__ = [
    "IngestError",
    "BadRequest",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "Unavailable",
    "Overloaded",
    "Unauthenticated",
    "PermissionDenied",
    "RecordError",
    "Status",
    "internal_error",
]


@dataclass(frozen=True, slots=True)
class Status:
    """How one error is answered on each transport."""

    grpc_code: grpc.StatusCode
    http_status: int
    retryable: bool


class IngestError(Exception):
    """A request-level failure. ``message`` is meant for the client and names the problem."""

    status = Status(grpc.StatusCode.INTERNAL, 500, retryable=False)

    def __init__(self, message: str, *, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_seconds = retry_after_seconds


class BadRequest(IngestError):
    """The request cannot be decoded or breaks the protocol: do not retry it."""

    status = Status(grpc.StatusCode.INVALID_ARGUMENT, 400, retryable=False)


class PayloadTooLarge(IngestError):
    """The request is over the size limit: split it into smaller batches."""

    status = Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 413, retryable=False)


class UnsupportedMediaType(IngestError):
    """HTTP only: the body is neither OTLP protobuf nor OTLP JSON."""

    status = Status(grpc.StatusCode.INVALID_ARGUMENT, 415, retryable=False)


class Unavailable(IngestError):
    """Storage cannot take the request now (database unreachable): retry later."""

    status = Status(grpc.StatusCode.UNAVAILABLE, 503, retryable=True)


class Overloaded(IngestError):
    """Too much is in flight: retry later, the collector sheds load instead of dropping it."""

    status = Status(grpc.StatusCode.UNAVAILABLE, 429, retryable=True)


class Unauthenticated(IngestError):
    """No valid ingest token where one is needed: send one (the message says how)."""

    status = Status(grpc.StatusCode.UNAUTHENTICATED, 401, retryable=False)


class PermissionDenied(IngestError):
    """A valid token that may not send events (an admin or auditor token)."""

    status = Status(grpc.StatusCode.PERMISSION_DENIED, 403, retryable=False)


def internal_error() -> IngestError:
    """What a client is told when the collector itself failed: not retryable, and logged."""
    return IngestError("the collector failed while processing this request; the error was logged with its traceback")


class RecordError(Exception):
    """One record cannot become an audit event. Rejected and quarantined, never retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
