"""PiggyWatch: monitoring and alerting sidecar for Postgres-backed app backends."""

__version__ = "0.1.0"

__all__ = ["__version__"]
