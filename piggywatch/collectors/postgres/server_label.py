"""The labels every sample of a PostgreSQL target carries besides ``target``."""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict

DEFAULT_PORT = "5432"


def server_address(dsn: str) -> str:
    """host:port of a DSN, as postgres_exporter's ``server`` label shows it.

    The first host and port of a multi-host DSN; a socket directory as host when the DSN
    names one; libpq's defaults (localhost, 5432) for what it leaves out.
    """
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or params.get("hostaddr") or "localhost").split(",")[0]
    port = str(params.get("port") or DEFAULT_PORT).split(",")[0]
    return f"{host}:{port}"


def target_labels(dsn: str, *, job: str, instance: str) -> tuple[tuple[str, str], ...]:
    """``server``, ``job`` and ``instance`` (host:port unless set) for a target's samples."""
    server = server_address(dsn)
    return (("instance", instance or server), ("job", job), ("server", server))
