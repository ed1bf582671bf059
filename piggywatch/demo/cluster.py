"""Throwaway PostgreSQL clusters for `piggywatch demo` and the test suite."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, LiteralString, Self
from urllib.parse import quote

import psycopg
from psycopg import sql

from piggywatch.demo.binaries import (
    PostgresInstall,
    PostgresNotFound,
    find_pg_bindir,
    find_postgres,
    readable_by_others,
    stage_install,
)

__all__ = [
    "DEMO_DATABASE",
    "MONITORING_GRANTS",
    "MONITOR_ROLE",
    "NOMONITOR_ROLE",
    "SUPERUSER",
    "CannotRunServer",
    "MonitoringGrant",
    "PostgresInstall",
    "PostgresNotFound",
    "ThrowawayCluster",
    "clean_stale_clusters",
    "find_pg_bindir",
    "find_postgres",
    "grant_monitoring",
]

DEMO_DATABASE = "piggybong"
MONITOR_ROLE = "piggywatch"
NOMONITOR_ROLE = "piggywatch_nomonitor"
SUPERUSER = "postgres"

# As root, the server runs as this unprivileged OS user (initdb and postgres refuse root).
SERVER_OS_USER_ENV = "PIGGYWATCH_POSTGRES_OS_USER"
_DEFAULT_SERVER_OS_USER = "postgres"
_PORT_ATTEMPTS = 3
_COMMAND_TIMEOUT = 120.0
# Every cluster's directory is tempdir/<prefix>XXXX and holds <owner file>: which process
# made it, so a later start can remove the clusters of a process that died (SIGKILL, OOM)
# without touching those of processes still running.
CLUSTER_DIR_PREFIX = "piggywatch-pg-"
_OWNER_FILE = "piggywatch-owner.json"


class CannotRunServer(PostgresNotFound):
    """Running as root, and no unprivileged OS user to run the PostgreSQL server as."""


# Supabase's cluster-wide roles, as a new project has them (attributes as Supabase sets
# them; passwords are left out, so none of them can log in here).
SUPABASE_ROLES = """
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
CREATE ROLE authenticator LOGIN NOINHERIT;
GRANT anon, authenticated, service_role TO authenticator;
CREATE ROLE supabase_admin LOGIN SUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS;
CREATE ROLE supabase_auth_admin LOGIN NOINHERIT CREATEROLE;
CREATE ROLE supabase_storage_admin LOGIN NOINHERIT CREATEROLE;
CREATE ROLE dashboard_user CREATEDB CREATEROLE REPLICATION;
"""


@dataclass(frozen=True, slots=True)
class MonitoringGrant:
    """One privilege the monitoring role needs, and what degrades without it."""

    statements: tuple[LiteralString, ...]
    without: str
    # The role that must run it: the tables' owner for a row security policy.
    run_as: str | None = None


# Everything the monitoring role of the demo database holds, in the README's words; {role}
# is the role. Nothing else: no superuser, no ownership, no write.
MONITORING_GRANTS = (
    MonitoringGrant(
        ("GRANT pg_monitor TO {role}",),
        "statements: not collected (other roles' statements hidden, setup error); "
        "connections: other roles' sessions show no state; database sizes: only "
        "databases the role may connect to; cost disk usage: no WAL size (permission)"),
    MonitoringGrant(
        ("GRANT USAGE ON SCHEMA extensions TO {role}",),
        "statements: not collected (schema extensions not usable, setup error)"),
    MonitoringGrant(
        ("GRANT SELECT ON public.users, public.purchases, public.edge_functions_logs "
         "TO {role}",),
        "growth, cost and edge-function sources of those tables fail with "
        "reason=\"permission\""),
    MonitoringGrant(
        ("GRANT USAGE ON SCHEMA auth TO {role}",
         "GRANT SELECT ON auth.users, auth.sessions TO {role}"),
        "growth and cost (MAU) from auth.users / auth.sessions fail with "
        "reason=\"permission\""),
    MonitoringGrant(
        ("CREATE POLICY {role} ON auth.users FOR SELECT TO {role} USING (true)",
         "CREATE POLICY {role} ON auth.sessions FOR SELECT TO {role} USING (true)"),
        "auth.users / auth.sessions have row level security on (as on Supabase): without "
        "a policy the role reads no rows, so MAU and signups read 0",
        run_as="supabase_auth_admin"),
)


def grant_monitoring(conn: psycopg.Connection[Any], role: str,
                     grants: Sequence[MonitoringGrant] = MONITORING_GRANTS) -> None:
    """Give ``role`` the monitoring privileges ``grants`` (all of them by default)."""
    for grant in grants:
        if grant.run_as is not None:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(grant.run_as)))
        for statement in grant.statements:
            conn.execute(sql.SQL(statement).format(role=sql.Identifier(role)))
        if grant.run_as is not None:
            conn.execute("RESET ROLE")


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_user_prefix() -> list[str]:
    # initdb and pg_ctl refuse to run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", _server_os_user(), "--"]
    return []


def _server_os_user() -> str:
    return os.environ.get(SERVER_OS_USER_ENV, "").strip() or _DEFAULT_SERVER_OS_USER


def _server_user() -> pwd.struct_passwd | None:
    """The OS user the server runs as when we are root; None when we are not root.

    Raises CannotRunServer when root has no unprivileged user to hand the server to.
    """
    if os.geteuid() != 0:
        return None
    name = _server_os_user()
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        raise CannotRunServer(
            "running as root: PostgreSQL refuses to run as root, and this machine has no "
            f"{name!r} OS user to run it as. Run piggywatch demo as an ordinary user, create "
            f"that user (useradd --system --user-group {name}), or name another "
            f"unprivileged user in {SERVER_OS_USER_ENV}"
        ) from None
    if shutil.which("runuser") is None:
        raise CannotRunServer(
            "running as root: PostgreSQL refuses to run as root, and runuser (util-linux), "
            f"which would start it as the {name!r} user, is not installed. Run "
            "piggywatch demo as an ordinary user")
    return user


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot), to tell a reused pid apart;
    None where /proc is not available."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    return started is None or _process_start(pid) in (started, None)


def _write_owner(base_dir: Path, bindir: Path) -> None:
    owner = {"pid": os.getpid(), "started": _process_start(os.getpid()), "bindir": str(bindir)}
    (base_dir / _OWNER_FILE).write_text(json.dumps(owner), encoding="utf-8")


def clean_stale_clusters(tmp_root: Path | None = None) -> list[Path]:
    """Stop and remove the throwaway clusters whose owning process has died; returns them.

    Only directories holding an owner file written by this OS user are considered (the
    server user can write in a cluster's directory, but cannot make a file owned by root),
    and only when the process that wrote it is gone: clusters of running test sessions or
    demos are left alone.
    """
    removed: list[Path] = []
    root = tmp_root or Path(tempfile.gettempdir())
    for base_dir in root.glob(f"{CLUSTER_DIR_PREFIX}*"):
        marker = base_dir / _OWNER_FILE
        try:
            if marker.lstat().st_uid != os.geteuid() or not marker.is_file():
                continue
            owner = json.loads(marker.read_text(encoding="utf-8"))
            pid, started, bindir = int(owner["pid"]), owner["started"], Path(owner["bindir"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(pid, started):
            continue
        _teardown(bindir, base_dir)
        removed.append(base_dir)
    return removed


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
    _quit_postmaster(data_dir)
    shutil.rmtree(base_dir, ignore_errors=True)


def _quit_postmaster(data_dir: Path) -> None:
    """If pg_ctl could not stop the server (its binaries gone), SIGQUIT the postmaster of
    ``data_dir`` (PostgreSQL's immediate shutdown), after checking it is that server."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text(encoding="utf-8").split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return
    if str(data_dir).encode() in cmdline:
        try:
            os.kill(pid, signal.SIGQUIT)
        except OSError:
            return


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
        install: PostgresInstall | None = None,
    ) -> None:
        self._install = install
        self._max_connections = max_connections
        self._requested_port = port
        self._port = port
        self._settings = dict(settings or {})
        self._superuser_password = secrets.token_urlsafe(24)
        self._role_passwords: dict[str, str] = {}
        self._bindir: Path | None = None
        self._running_install: PostgresInstall | None = None
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
    def install(self) -> PostgresInstall:
        """The server binaries this cluster runs (a readable copy of them, as root)."""
        if self._running_install is None:
            raise RuntimeError("the cluster has not been created (call start())")
        return self._running_install

    @property
    def server_major(self) -> int:
        """The PostgreSQL major version this cluster runs, e.g. 15 or 18."""
        return self.install.major

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
        """Create the ``piggybong`` database, shaped like a Supabase project, with the demo
        schema, and the monitoring roles.

        The database has Supabase's roles (anon, authenticated, service_role,
        supabase_admin, …) and schemas (auth with row level security on, storage,
        extensions holding pg_stat_statements, supabase_migrations). ``piggywatch`` is an
        ordinary role with exactly ``MONITORING_GRANTS`` (what the README tells users to
        grant); ``piggywatch_nomonitor`` only may connect, to exercise what the daemon sees
        with too few privileges.
        """
        files = resources.files("piggywatch.demo")
        scripts = [files.joinpath(name).read_bytes()
                   for name in ("supabase.sql", "schema.sql", "supabase_seed.sql")]
        passwords = {role: secrets.token_urlsafe(24) for role in (MONITOR_ROLE, NOMONITOR_ROLE)}
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            # Utility statements are recorded verbatim, and CREATE ROLE carries a password.
            conn.execute("SET pg_stat_statements.track_utility = off")
            conn.execute(SUPABASE_ROLES)
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DATABASE)))
            for role, password in passwords.items():
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(password)
                    )
                )
        with psycopg.connect(self.dsn(DEMO_DATABASE), autocommit=True) as conn:
            conn.execute("SET pg_stat_statements.track_utility = off")
            for script in scripts:
                conn.execute(script)
            grant_monitoring(conn, MONITOR_ROLE)
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(DEMO_DATABASE), sql.Identifier(NOMONITOR_ROLE)))
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
        install = self._install or find_postgres()
        server_user = _server_user()
        clean_stale_clusters()
        base_dir = Path(tempfile.mkdtemp(prefix=CLUSTER_DIR_PREFIX))
        try:
            if server_user is not None and not readable_by_others(install.bindir / "postgres"):
                install = stage_install(install, base_dir / "pg")
        except BaseException:
            shutil.rmtree(base_dir, ignore_errors=True)
            raise
        bindir = install.bindir
        self._bindir, self._base_dir, self._running_install = bindir, base_dir, install
        _write_owner(base_dir, bindir)
        # Also runs at interpreter exit, so an aborted test run leaves no server behind.
        self._finalizer = weakref.finalize(self, _teardown, bindir, base_dir)
        try:
            socket_dir = base_dir / "sock"
            socket_dir.mkdir(mode=0o700)
            pwfile = base_dir / "pwfile"
            pwfile.touch(mode=0o600)
            pwfile.write_text(self._superuser_password + "\n", encoding="utf-8")
            if server_user is not None:
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
