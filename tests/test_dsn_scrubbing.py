"""A DSN that libpq cannot use is reported by target and kind of problem, never quoted.

libpq's own messages quote the part of the string it stumbled on ("unexpected spaces found
in "ss word%zz@localhost""), and a password with an unescaped ``@`` even parses, leaving
the rest of the password in the host name that the connect error then prints. Each case
runs the real ``piggywatch check``, ``sample`` and ``run`` and looks at everything they
print.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from piggywatch.demo.cluster import DEMO_DATABASE, ThrowawayCluster
from tests.support.metrics import parse_metrics, value
from tests.support.ports import free_port

# (password, how the DSN is written with it, what the message must tell the user to do)
CASES = [
    ("p@ss word%zz", "postgresql://monitor:{pw}@127.0.0.1:{port}/app", "%20"),
    ("hunter2 extra", "postgresql://monitor:{pw}@127.0.0.1:{port}/app", "%20"),
    ("hunter2 extra", "host=127.0.0.1 port={port} user=monitor password={pw} dbname=app",
     "password='"),
    ("p@ss word%zz", "host=127.0.0.1 port={port} user=monitor password={pw} dbname=app",
     "password='"),
    ("pa%zzsecret", "postgresql://monitor:{pw}@127.0.0.1:{port}/app", "%25"),
    ("p@ssw0rdfrag", "postgresql://monitor:{pw}@127.0.0.1:{port}/app", "%40"),
    ("pw/frag?ment", "postgresql://monitor:{pw}@127.0.0.1:{port}/app", "percent-encode"),
    ("s3cr'et word", "host=127.0.0.1 port={port} user=monitor password='{pw}' dbname=app",
     "\\'"),
]
IDS = ["url-at-and-space", "url-space", "keyword-stray-word", "keyword-at-and-space",
       "url-bad-percent-escape", "url-at-no-space", "url-slash-and-question-mark",
       "keyword-unterminated-quote"]


def fragments(password: str) -> set[str]:
    """Every piece of the password long enough to identify it (5 characters)."""
    return {password[i:i + 5] for i in range(len(password) - 4)} | {password}


def assert_no_fragment(password: str, output: str) -> None:
    leaked = sorted(f for f in fragments(password) if f in output)
    assert not leaked, f"password fragments {leaked} in:\n{output}"


def write_config(tmp_path: Path, dsn: str, *, state: str = "sqlite:///./state.db") -> Path:
    config = tmp_path / "piggywatch.yaml"
    # A YAML single-quoted scalar: the DSN reaches the daemon exactly as written.
    quoted = dsn.replace("'", "''")
    config.write_text(f"targets:\n  - name: orders-db\n    dsn: '{quoted}'\n"
                      f"    connect_timeout: 1s\nstate: {state}\n")
    return config


def piggywatch(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "piggywatch", *args], capture_output=True,
                          text=True, timeout=timeout)


def run_daemon(config: Path) -> subprocess.CompletedProcess[str]:
    """``piggywatch run``: it must refuse to start; if it starts anyway, its first seconds."""
    proc = subprocess.Popen([sys.executable, "-m", "piggywatch", "run", "--config",
                             str(config), "--listen", f"127.0.0.1:{free_port()}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize(("password", "shape", "fix"), CASES, ids=IDS)
def test_a_dsn_libpq_cannot_use_is_named_by_target_in_check_sample_and_run(
        tmp_path: Path, password: str, shape: str, fix: str) -> None:
    config = write_config(tmp_path, shape.format(pw=password, port=free_port()))
    for name, result in (("check", piggywatch("check", "--config", str(config))),
                         ("sample", piggywatch("sample", "--config", str(config))),
                         ("run", run_daemon(config))):
        output = result.stdout + result.stderr
        assert_no_fragment(password, output)
        assert result.returncode == 1, f"{name} exited {result.returncode}:\n{output}"
        assert "Traceback" not in output, output
        assert "piggywatch.yaml:3: targets[0].dsn" in output, f"{name}:\n{output}"
        assert "target orders-db" in output, f"{name}:\n{output}"
        assert fix in output, f"{name} does not say how to fix it ({fix!r}):\n{output}"


@pytest.mark.parametrize(("password", "shape", "fix"), CASES[:2] + CASES[4:6],
                         ids=IDS[:2] + IDS[4:6])
def test_a_state_url_libpq_cannot_use_is_reported_without_its_password(
        tmp_path: Path, password: str, shape: str, fix: str) -> None:
    state = shape.format(pw=password, port=free_port())
    config = write_config(tmp_path, f"postgresql://monitor@127.0.0.1:{free_port()}/app",
                          state=f"'{state}'")
    for name, result in (("check", piggywatch("check", "--config", str(config))),
                         ("run", run_daemon(config))):
        output = result.stdout + result.stderr
        assert_no_fragment(password, output)
        assert result.returncode == 1, f"{name} exited {result.returncode}:\n{output}"
        assert "Traceback" not in output, output
        assert "state" in output and fix in output, f"{name}:\n{output}"


def test_a_percent_encoded_or_quoted_password_still_connects(pg_cluster: ThrowawayCluster,
                                                             tmp_path: Path) -> None:
    """The check refuses what libpq cannot use, not passwords with odd characters."""
    password = "p@ss word%zz/?#'\\"
    role = "piggywatch_odd_password"
    literal = password.replace("'", "''")
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{literal}' IN ROLE pg_monitor")
    try:
        escaped = password.replace("\\", "\\\\").replace("'", "\\'")
        for dsn in (f"postgresql://{role}:{quote(password, safe='')}@{pg_cluster.host}:"
                    f"{pg_cluster.port}/{DEMO_DATABASE}",
                    f"host={pg_cluster.host} port={pg_cluster.port} user={role} "
                    f"password='{escaped}' dbname={DEMO_DATABASE}"):
            config = write_config(tmp_path, dsn)
            checked = piggywatch("check", "--config", str(config))
            assert checked.returncode == 0, checked.stderr
            result = piggywatch("sample", "--config", str(config))
            assert result.returncode == 0, result.stderr
            assert value(parse_metrics(result.stdout), "pg_up", target="orders-db") == 1.0
    finally:
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")
