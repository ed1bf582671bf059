"""Throwaway PostgreSQL clusters for `piggywatch demo` and the test suite."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import weakref
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import psycopg
from psycopg import sql

DEMO_DATABASE = "piggybong"
MONITOR_ROLE = "piggywatch"
NOMONITOR_ROLE = "piggywatch_nomonitor"
SUPERUSER = "postgres"

_SERVER_OS_USER = "postgres"
_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
_DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
_INSTALL_HINT = (
    "install the PostgreSQL server and contrib modules "
    "(Debian/Ubuntu: apt-get install postgresql postgresql-contrib)"
)
_PORT_ATTEMPTS = 3
_COMMAND_TIMEOUT = 120.0


class PostgresNotFound(RuntimeError):
    """No usable PostgreSQL server binaries (with pg_stat_statements) on this machine."""


def find_pg_bindir() -> Path:
    """Directory holding ``initdb``, ``pg_ctl`` and ``postgres``, with pg_stat_statements.

    ``pg_ctl`` on PATH wins; otherwise the newest ``/usr/lib/postgresql/*/bin``.
    """
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        # PATH entries are often symlinks (/usr/local/bin, Homebrew); the real bindir next
        # to the target also holds pg_config, which the extension check needs.
        candidates += [Path(on_path).resolve().parent, Path(on_path).parent]
    candidates += sorted(_DEBIAN_PG_ROOT.glob("*/bin"), key=_version_key, reverse=True)

    without_extension: list[Path] = []
    for bindir in dict.fromkeys(candidates):
        if not all(os.access(bindir / name, os.X_OK) for name in _SERVER_BINARIES):
            continue
        if _has_pg_stat_statements(bindir):
            return bindir
        without_extension.append(bindir)
    if without_extension:
        found = ", ".join(str(p) for p in without_extension)
        raise PostgresNotFound(f"PostgreSQL in {found} lacks pg_stat_statements: {_INSTALL_HINT}")
    raise PostgresNotFound(f"no PostgreSQL server binaries found: {_INSTALL_HINT}")


def _version_key(bindir: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in bindir.parent.name.split("."))
    except ValueError:
        return (-1,)


def _has_pg_stat_statements(bindir: Path) -> bool:
    pg_config = bindir / "pg_config"
    if not os.access(pg_config, os.X_OK):
        return True  # can't tell cheaply; CREATE EXTENSION will say so if it's missing
    result = subprocess.run(
        [str(pg_config), "--pkglibdir", "--sharedir"],
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    )
    lines = result.stdout.splitlines()
    if result.returncode != 0 or len(lines) != 2:
        return True
    pkglibdir, sharedir = (Path(line.strip()) for line in lines)
    return (pkglibdir / "pg_stat_statements.so").exists() and (
        sharedir / "extension" / "pg_stat_statements.control"
    ).exists()


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_user_prefix() -> list[str]:
    # initdb and pg_ctl refuse to run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", _SERVER_OS_USER, "--"]
    return []


def _run_server_tool(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd must be readable by the server user, or initdb complains about the caller's cwd.
    return subprocess.run(
        [*_server_user_prefix(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=_COMMAND_TIMEOUT,
    )


def _teardown(bindir: Path, base_dir: Path) -> None:
    """Stop the server if it still runs and delete everything; safe to call at exit."""
    data_dir = base_dir / "data"
    for mode in ("fast", "immediate"):
        if not (data_dir / "postmaster.pid").exists():
            break
        try:
            _run_server_tool(
                [str(bindir / "pg_ctl"), "-D", str(data_dir), "-m", mode, "-w", "stop"], base_dir
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
    shutil.rmtree(base_dir, ignore_errors=True)


def _conf_line(name: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "''")
    return f"{name} = '{escaped}'\n"


class ThrowawayCluster:
    """A private PostgreSQL server in a temporary directory, listening on 127.0.0.1 only.

    Tuned for speed, not durability (fsync off), with pg_stat_statements preloaded.
    ``stop()`` keeps the data so ``start()`` can bring it back on the same port;
    ``destroy()`` (or leaving the ``with`` block, or interpreter exit) removes everything.
    Several instances can run side by side. As root, the server runs as the ``postgres``
    OS user.
    """

    def __init__(
        self,
        *,
        max_connections: int = 20,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._requested_port = port
        self._port = port
        self._settings = dict(settings or {})
        self._superuser_password = secrets.token_urlsafe(24)
        self._role_passwords: dict[str, str] = {}
        self._bindir: Path | None = None
        self._base_dir: Path | None = None
        self._initdb_conf = ""
        self._started_once = False
        self._running = False
        self._finalizer: weakref.finalize[[Path, Path], ThrowawayCluster] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the cluster has no port until start()")
        return self._port

    @property
    def superuser_password(self) -> str:
        return self._superuser_password

    @property
    def running(self) -> bool:
        return self._running

    @property
    def base_dir(self) -> Path:
        """The cluster's temporary directory (removed by destroy())."""
        return self._require_base_dir()

    @property
    def log_path(self) -> Path:
        return self._require_base_dir() / "server.log"

    def log_tail(self, n: int = 50) -> str:
        """The last ``n`` lines of the server log, or "" if there is none yet."""
        if self._base_dir is None:
            return ""
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])

    def role_password(self, name: str) -> str:
        """Password of ``postgres`` or of a role created by ``bootstrap_demo()``."""
        if name == SUPERUSER:
            return self._superuser_password
        try:
            return self._role_passwords[name]
        except KeyError:
            raise KeyError(f"no password known for role {name!r}") from None

    def dsn(
        self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None
    ) -> str:
        """A ``postgresql://`` URL over TCP; the password defaults to the role's own."""
        if password is None:
            password = self.role_password(user)
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"postgresql://{credentials}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def start(self) -> None:
        """Create the cluster on first use, then start the server and wait until it's up."""
        if self._running:
            raise RuntimeError("the cluster is already running")
        if self._base_dir is None:
            self._initdb()
        try:
            self._launch()
        except BaseException:
            if not self._started_once:
                self.destroy()
            raise
        self._started_once = True

    def stop(self) -> None:
        """Fast shutdown; the data stays, so ``start()`` brings it back on the same port."""
        if not self._running:
            return
        bindir, base_dir = self._bindir, self._require_base_dir()
        assert bindir is not None
        result = _run_server_tool(
            [str(bindir / "pg_ctl"), "-D", str(base_dir / "data"), "-m", "fast", "-w", "stop"],
            base_dir,
        )
        if result.returncode != 0:
            raise RuntimeError(self._failure_message("pg_ctl stop failed", result))
        self._running = False

    def destroy(self) -> None:
        """Stop the server if needed and delete the cluster's directory."""
        if self._finalizer is not None:
            self._finalizer()
        self._finalizer = None
        self._base_dir = None
        self._running = False
        self._started_once = False
        self._port = self._requested_port
        self._role_passwords.clear()

    def bootstrap_demo(self) -> None:
        """Create the ``piggybong`` database with the demo schema and the monitoring roles.

        ``piggywatch`` is a member of ``pg_monitor``; ``piggywatch_nomonitor`` is not, to
        exercise what the daemon sees with too few privileges.
        """
        schema = resources.files("piggywatch.demo").joinpath("schema.sql").read_bytes()
        passwords = {role: secrets.token_urlsafe(24) for role in (MONITOR_ROLE, NOMONITOR_ROLE)}
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            # Utility statements are recorded verbatim, and CREATE ROLE carries a password.
            conn.execute("SET pg_stat_statements.track_utility = off")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DATABASE)))
            for role, password in passwords.items():
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(password)
                    )
                )
                conn.execute(
                    sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                        sql.Identifier(DEMO_DATABASE), sql.Identifier(role)
                    )
                )
            conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(MONITOR_ROLE)))
        with psycopg.connect(self.dsn(DEMO_DATABASE), autocommit=True) as conn:
            conn.execute(schema)
            conn.execute(
                sql.SQL("GRANT USAGE ON SCHEMA extensions TO {}").format(
                    sql.SQL(", ").join(sql.Identifier(role) for role in passwords)
                )
            )
        self._role_passwords.update(passwords)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def _require_base_dir(self) -> Path:
        if self._base_dir is None:
            raise RuntimeError("the cluster has not been created (call start())")
        return self._base_dir

    def _initdb(self) -> None:
        bindir = find_pg_bindir()
        base_dir = Path(tempfile.mkdtemp(prefix="piggywatch-pg-"))
        self._bindir, self._base_dir = bindir, base_dir
        # Also runs at interpreter exit, so an aborted test run leaves no server behind.
        self._finalizer = weakref.finalize(self, _teardown, bindir, base_dir)
        try:
            socket_dir = base_dir / "sock"
            socket_dir.mkdir(mode=0o700)
            pwfile = base_dir / "pwfile"
            pwfile.touch(mode=0o600)
            pwfile.write_text(self._superuser_password + "\n", encoding="utf-8")
            if os.geteuid() == 0:
                server_user = pwd.getpwnam(_SERVER_OS_USER)
                for path in (base_dir, socket_dir, pwfile):
                    os.chown(path, server_user.pw_uid, server_user.pw_gid)
            result = _run_server_tool(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(base_dir / "data"),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                base_dir,
            )
            pwfile.unlink()
            if result.returncode != 0:
                raise RuntimeError(self._failure_message("initdb failed", result))
            self._initdb_conf = (base_dir / "data" / "postgresql.conf").read_text(encoding="utf-8")
        except BaseException:
            self.destroy()
            raise

    def _write_conf(self) -> None:
        base_dir = self._require_base_dir()
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(base_dir / "sock"),
            "max_connections": str(self._max_connections),
            "superuser_reserved_connections": "3",
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.max": "10000",
            "pg_stat_statements.track": "top",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "track_io_timing": "on",
            **self._settings,
        }
        block = "".join(_conf_line(name, value) for name, value in settings.items())
        # Rewritten from initdb's original so a re-picked port doesn't pile up lines.
        (base_dir / "data" / "postgresql.conf").write_text(
            f"{self._initdb_conf}\n# piggywatch throwaway cluster\n{block}", encoding="utf-8"
        )

    def _launch(self) -> None:
        bindir, base_dir = self._bindir, self._require_base_dir()
        assert bindir is not None
        # A port picked by us can be taken before the server binds it (another cluster,
        # an outgoing connection); a port the caller chose, or a restart, must not move.
        may_repick = self._requested_port is None and not self._started_once
        attempts = _PORT_ATTEMPTS if may_repick else 1
        for attempt in range(1, attempts + 1):
            if self._port is None or (may_repick and attempt > 1):
                self._port = _free_loopback_port()
            self._write_conf()
            log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
            result = _run_server_tool(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(base_dir / "data"),
                    "-l",
                    str(self.log_path),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                base_dir,
            )
            if result.returncode == 0:
                self._running = True
                return
            if "could not bind" not in self._log_since(log_size):
                break
        raise RuntimeError(self._failure_message("PostgreSQL failed to start", result))

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _failure_message(self, what: str, result: subprocess.CompletedProcess[str]) -> str:
        output = (result.stdout + result.stderr).strip()
        return f"{what} (exit {result.returncode}): {output}\n--- server log ---\n{self.log_tail()}"
