"""otaudit SDK: record audit events as OpenTelemetry log records (contract.md)."""

from otaudit_sdk import attributes

__all__ = ["__version__", "attributes"]

__version__ = "0.1.0"
