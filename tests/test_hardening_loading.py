"""Config and rule files that cannot be used: `check` and `run` both refuse them with the file,
the place and the reason (never a traceback), and whatever `check` passes, `run` starts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from piggywatch.demo.cluster import ThrowawayCluster
from tests.support.daemon_process import DaemonProcess, fast_rules_config
from tests.support.metrics import value
from tests.support.servers.webhook import WebhookServer

# --- the files of each case ------------------------------------------------------------

DSN = "postgresql://nobody@127.0.0.1:1/nothing"
CONFIG = f"""\
targets: [{{name: main, dsn: "{DSN}", connect_timeout: 1s}}]
state: sqlite:///./state.db
rule_files: [rules.yaml]
"""
RULES = b"""\
groups:
  - name: g
    rules:
      - alert: Up
        expr: pg_up == 1
"""
# One byte of Latin-1 (an e with an acute accent) where UTF-8 is expected.
LATIN1 = RULES.replace(b"alert: Up", b"alert: Up\xe9")
LATIN1_AT = LATIN1.index(b"\xe9")
NUL = RULES.replace(b"alert: Up", b"alert: Up\x00")
NUL_AT = NUL.index(b"\x00")


def bomb(levels: int, top: str = "") -> bytes:
    """A "billion laughs": each anchor is a list of nine aliases of the one before."""
    lines = [top.rstrip("\n"), 'x0: &x0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"x{i}: &x{i} [" + ",".join([f"*x{i - 1}"] * 9) + "]")
    return ("\n".join(line for line in lines if line) + "\n").encode()


def line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


@dataclass(frozen=True)
class Bad:
    """A configuration ``run`` cannot start with, and what the error must name."""

    config: bytes
    expect: tuple[str, ...]
    rules: bytes | None = RULES  # rules.yaml; None: a symbolic link to nowhere
    env: dict[str, str] = field(default_factory=dict)


def _cfg(extra: str = "", base: str = CONFIG) -> bytes:
    return (base + extra).encode()


BAD: dict[str, Bad] = {
    "rule file not UTF-8": Bad(
        _cfg(), ("rules.yaml:4:", f"byte offset {LATIN1_AT}", "UTF-8"),
        rules=LATIN1),
    "rule file in UTF-16": Bad(_cfg(), ("rules.yaml", "UTF-16"),
                               rules=RULES.decode().encode("utf-16")),
    "rule file with a NUL byte": Bad(
        _cfg(), ("rules.yaml:4:", f"NUL byte at byte offset {NUL_AT}"), rules=NUL),
    "config not UTF-8": Bad(
        _cfg("external_labels: {site: café}\n").replace("é".encode(), b"\xe9"),
        ("piggywatch.yaml:4:", "byte offset", "UTF-8")),
    "NaN duration": Bad(_cfg("evaluation_interval: .nan\n"), ("evaluation_interval",
                                                               "finite")),
    "infinite duration": Bad(_cfg("evaluation_interval: .inf\n"),
                             ("evaluation_interval", "finite")),
    "huge duration": Bad(
        _cfg(base=CONFIG.replace("connect_timeout: 1s",
                                 "connect_timeout: 1s, collectors: {connections: "
                                 "{interval: 99999999999w}}")),
        ("targets[0].collectors.connections.interval", "at most")),
    "huge rule group interval": Bad(
        _cfg(), ("rules.yaml:3:", "interval", "at most"),
        rules=RULES.replace(b"    rules:", b"    interval: 999999999y\n    rules:")),
    "port 0": Bad(_cfg("server: {listen: '127.0.0.1:0'}\n"), ("server.listen", "1 to 65535")),
    "port 70000": Bad(_cfg("server: {listen: '127.0.0.1:70000'}\n"),
                      ("server.listen", "1 to 65535")),
    "missing TLS certificate": Bad(
        _cfg("server: {tls: {cert_file: missing-cert.pem, key_file: missing-key.pem}}\n"),
        ("server.tls.cert_file", "missing-cert.pem")),
    "missing CA file": Bad(_cfg("ha: {ca_file: missing-ca.pem}\n"),
                           ("ha.ca_file", "missing-ca.pem")),
    "unreadable rule file": Bad(_cfg(), ("rules.yaml", "cannot read"), rules=None),
    "broken rule": Bad(_cfg(), ("rules.yaml:5:", "rule 'Up'", "expr"),
                       rules=RULES.replace(b"pg_up == 1", b"pg_up ==")),
    "rule glob matching nothing": Bad(
        _cfg(base=CONFIG.replace("[rules.yaml]", "[rules.yaml, nothing/*.yaml]")),
        ("nothing/*.yaml", "matches no file")),
    "alias bomb in the config": Bad(bomb(7, CONFIG), ("piggywatch.yaml:", "alias")),
    "alias bomb in a rule file": Bad(_cfg(), ("rules.yaml:", "alias"),
                                     rules=bomb(7, RULES.decode())),
    "recursive alias": Bad(_cfg("external_labels: &a {x: *a}\n"),
                           ("piggywatch.yaml:4:", "alias")),
    "deeply nested config": Bad(_cfg("external_labels: " + "[" * 5000 + "]" * 5000 + "\n"),
                                ("piggywatch.yaml:4:", "nested")),
    "oversized rule file": Bad(_cfg(), ("rules.yaml", "larger than"),
                               rules=RULES + b"#" * (8 << 20) + b"\n"),
    "short API token": Bad(_cfg("server: {api_token: short-token}\n"),
                           ("server.api_token", "16 characters")),
    "empty basic-auth password": Bad(
        _cfg("server: {metrics_basic_auth: {username: prometheus, password: ''}}\n"),
        ("server.metrics_basic_auth.password", "empty")),
}


def write_case(tmp_path: Path, case: Bad) -> Path:
    config = tmp_path / "piggywatch.yaml"
    config.write_bytes(case.config)
    rules = tmp_path / "rules.yaml"
    if case.rules is None:
        rules.symlink_to(tmp_path / "gone" / "rules.yaml")
    else:
        rules.write_bytes(case.rules)
    return config


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    # No PIGGYWATCH_* from the caller's environment, so the config file alone decides.
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH")}
    return {"PATH": "/usr/bin:/bin", **keep, **(extra or {})}


def check(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "piggywatch", "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env=environment(env),
                          cwd=config.parent)


def run_until_exit(config: Path, timeout: float) -> tuple[int | None, str]:
    """`piggywatch run`: its exit code and stderr, or None if it was still running."""
    stderr = config.parent / "run.stderr"
    with stderr.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "piggywatch", "run", "--config",
                                 str(config)], stdout=subprocess.DEVNULL, stderr=out,
                                env=environment(), cwd=config.parent)
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
    return code, stderr.read_text(errors="replace")


@pytest.mark.parametrize("name", sorted(BAD))
def test_what_run_cannot_start_with_is_refused_by_check_and_by_run(tmp_path: Path,
                                                                   name: str) -> None:
    case = BAD[name]
    config = write_case(tmp_path, case)
    started = time.monotonic()
    checked = check(config, case.env)
    check_took = time.monotonic() - started
    assert "Traceback" not in checked.stderr, checked.stderr[-2000:]
    assert checked.returncode == 1, checked.stdout + checked.stderr[-2000:]
    errors = [line for line in checked.stderr.splitlines() if line.startswith("error: ")]
    assert any(all(part in line for part in case.expect) for line in errors), checked.stderr
    # Refused at once, however the file was built to be slow (alias bombs, size).
    assert check_took < 30, check_took
    code, stderr = run_until_exit(config, timeout=30)
    assert code is not None, f"run started with what check refuses:\n{stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr[-2000:]
    assert code == 1, stderr[-2000:]
    assert any(all(part in line for part in case.expect) for line in stderr.splitlines()), stderr


def test_a_listen_address_in_use_is_one_error_line_not_a_traceback(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = tmp_path / "piggywatch.yaml"
        config.write_text(CONFIG + f"server: {{listen: '127.0.0.1:{port}'}}\n")
        (tmp_path / "rules.yaml").write_bytes(RULES)
        code, stderr = run_until_exit(config, timeout=30)
    assert code == 1, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}" in errors[0], errors


def test_what_check_passes_run_starts_and_serves(tmp_path: Path) -> None:
    config = tmp_path / "piggywatch.yaml"
    config.write_text(CONFIG)
    (tmp_path / "rules.yaml").write_bytes(RULES)
    checked = check(config)
    assert checked.returncode == 0, checked.stderr
    assert "OK" in checked.stdout
    with DaemonProcess(config, tmp_path) as proc:
        assert proc.get("/readyz").status_code == 200
        proc.terminate()


def test_a_trailing_newline_in_the_api_token_is_stripped_with_a_warning(tmp_path: Path) -> None:
    config = tmp_path / "piggywatch.yaml"
    config.write_text(CONFIG + "server: {api_token: '${TOKEN_FROM_SECRET}'}\n")
    (tmp_path / "rules.yaml").write_bytes(RULES)
    token = "k8s-secret-token-0123456789"
    checked = check(config, {"TOKEN_FROM_SECRET": token + "\n"})
    assert checked.returncode == 0, checked.stderr
    assert "warning: " in checked.stderr and "server.api_token" in checked.stderr
    assert token not in checked.stderr + checked.stdout
    # The daemon accepts the token as Kubernetes meant it, without the newline; here it
    # comes through an override (a YAML string, so "\\n" is a newline).
    with DaemonProcess(config, tmp_path, env={"TOKEN_FROM_SECRET": token + "\n",
                                              "PIGGYWATCH_SERVER__API_TOKEN": f'"{token}\\n"'},
                       token=token) as proc:
        assert proc.api("GET", "/api/v1/alerts").status_code == 200
        proc.terminate()
    assert "server.api_token" in proc.stderr() and token not in proc.stderr()


# --- bounded time and memory ------------------------------------------------------------

MEASURE = """\
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))
from pathlib import Path
from piggywatch.rules.loader import RuleFileError, load_rule_files
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
try:
    load_rule_files([Path(sys.argv[1])])
    outcome = "loaded"
except RuleFileError as exc:
    outcome = str(exc)
except MemoryError:
    outcome = "MemoryError"
took = time.monotonic() - started
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(f"{took:.3f} {grew} {outcome}")
"""


@pytest.mark.parametrize("kind", ["alias bomb", "oversized"])
def test_bombs_and_oversized_files_are_refused_quickly_in_bounded_memory(tmp_path: Path,
                                                                         kind: str) -> None:
    path = tmp_path / "rules.yaml"
    if kind == "alias bomb":
        path.write_bytes(bomb(7, RULES.decode()))
    else:
        path.write_bytes(RULES + b"#" * (8 << 20) + b"\n")
    found = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True,
                           text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-2000:]
    took, grew_kib, outcome = found.stdout.split(" ", 2)
    assert outcome != "loaded" and outcome.strip() != "MemoryError", outcome
    assert str(path) in outcome
    assert float(took) < 1.0, found.stdout
    # Reading the first bytes past the limit, not the file, nor the aliases' expansion.
    assert int(grew_kib) < 64 * 1024, found.stdout


# --- the running daemon: reloads that fail keep the last good rules ---------------------


def test_a_reload_of_a_file_that_is_not_utf8_keeps_the_rules_and_is_not_ready(
        tmp_path: Path) -> None:
    config = tmp_path / "piggywatch.yaml"
    config.write_text(CONFIG + "evaluation_interval: 1s\n")
    rules = tmp_path / "rules.yaml"
    rules.write_bytes(RULES)
    with DaemonProcess(config, tmp_path) as proc:
        proc.wait_for_metric(lambda v: value(v, "piggywatch_rule_group_rules", rule_group="g")
                             == 1, 10, "rules loaded")
        loaded_at = value(proc.metrics(),
                          "piggywatch_rule_files_last_reload_success_timestamp_seconds")
        assert loaded_at is not None
        rules.write_bytes(LATIN1)
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGHUP)
        v = proc.wait_for_metric(
            lambda v: value(v, "piggywatch_rule_files_last_reload_success") == 0, 10,
            "the failed reload reported")
        assert value(v, "piggywatch_rule_group_rules", rule_group="g") == 1
        assert value(v, "piggywatch_rule_files_last_reload_success_timestamp_seconds") \
            == loaded_at
        ready = proc.get("/readyz")
        assert ready.status_code == 503 and "rules.yaml" in ready.text
        # The 5 s file watcher sees the fixed file and the daemon is ready again.
        rules.write_bytes(RULES.replace(b"alert: Up", b"alert: UpAgain"))
        proc.wait_until(lambda: proc.get("/readyz").status_code == 200, 15, "ready again")
        assert proc.proc.poll() is None
        proc.terminate()
    log = proc.stderr()
    assert f"byte offset {LATIN1_AT}" in log and "Traceback" not in log


# --- rule files that vanish: no resolve pages --------------------------------------------

PAGING_RULES = """\
groups:
  - name: {name}
    rules:
      - alert: {name}Up
        expr: pg_up == 1
        labels: {{severity: critical}}
"""


@pytest.mark.parametrize("how", ["directory emptied", "one of two files removed",
                                 "file truncated"])
def test_rule_files_that_vanish_are_refused_and_nothing_resolves(
        pg_cluster: ThrowawayCluster, tmp_path: Path, how: str) -> None:
    dsn = pg_cluster.dsn(dbname="piggybong", user="piggywatch",
                         password=pg_cluster.role_password("piggywatch"))
    ruledir = tmp_path / "rules"
    ruledir.mkdir()
    files = {name: ruledir / f"{name.lower()}.yaml" for name in ("First", "Second")}
    for name, path in files.items():
        path.write_text(PAGING_RULES.format(name=name))
    with WebhookServer() as hook:
        config = tmp_path / "piggywatch.yaml"
        config.write_text(fast_rules_config(dsn).replace("[rules.yaml]", "[rules/*.yaml]")
                          + f"""\
receivers:
  - name: hook
    webhook: {{url: "{hook.url}"}}
route:
  receiver: hook
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
""")

        def statuses() -> list[tuple[str, str]]:
            return [(p["groupLabels"]["alertname"], p["status"]) for p in hook.posts]

        firing = [("FirstUp", "firing"), ("SecondUp", "firing")]
        with DaemonProcess(config, tmp_path) as proc:
            proc.wait_until(lambda: sorted(statuses()) == firing, 15, "both pages")
            kept = {p: p.read_bytes() for p in files.values()}
            if how == "directory emptied":
                gone = list(files.values())
                for path in gone:
                    path.unlink()
            elif how == "one of two files removed":
                gone = [files["Second"]]
                gone[0].unlink()
            else:
                gone = [files["Second"]]
                gone[0].write_bytes(b"")
            assert proc.proc is not None
            os.kill(proc.proc.pid, signal.SIGHUP)
            v = proc.wait_for_metric(
                lambda v: value(v, "piggywatch_rule_files_last_reload_success") == 0, 10,
                "the reload refused")
            evaluated = value(v, "piggywatch_rule_evaluations_total", rule_group="Second")
            assert evaluated is not None
            proc.wait_for_metric(
                lambda v: (value(v, "piggywatch_rule_evaluations_total",
                                 rule_group="Second") or 0) >= evaluated + 3, 15,
                "the last good rules still evaluated")
            assert proc.get("/readyz").status_code == 503
            for path, data in kept.items():
                path.write_bytes(data)
            proc.wait_for_metric(
                lambda v: value(v, "piggywatch_rule_files_last_reload_success") == 1, 15,
                "the files back")
            proc.wait_until(lambda: proc.get("/readyz").status_code == 200, 10, "ready")
            v = proc.metrics()
            for name in ("FirstUp", "SecondUp"):
                assert value(v, "ALERTS", alertname=name, alertstate="firing") == 1
            proc.wait_until_settled(after=time.time())
            proc.terminate()
        assert sorted(statuses()) == firing
        log = proc.stderr()
        for path in gone:
            assert str(path) in log

