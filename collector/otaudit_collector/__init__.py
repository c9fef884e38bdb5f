"""otaudit collector: OTLP in, validated audit events in PostgreSQL out."""

__all__ = ["__version__"]

__version__ = "0.1.0"
