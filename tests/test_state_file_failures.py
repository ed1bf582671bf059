"""A SQLite state file that cannot be used: one clear error at start, a metric and /readyz
while running.

Every case runs the real daemon (``python -m piggywatch run``) against the session's real
PostgreSQL. Tests run as root, so permission bits stop nothing: unreadable and read-only
files are what users really meet instead, a path that is a directory, a parent that is a
file, and a read-only file system (a tmpfs mounted read-only, which is what a read-only
volume or ``readOnlyRootFilesystem`` gives).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from piggywatch.demo.cluster import DEMO_DATABASE, MONITOR_ROLE, ThrowawayCluster
from tests.support.daemon_process import DaemonProcess
from tests.support.metrics import value
from tests.support.ports import free_port

RULES = """\
groups:
  - name: quiet
    rules:
      - alert: NeverFires
        expr: pg_up < 0
"""


def write_config(tmp_path: Path, cluster: ThrowawayCluster, state: Path) -> Path:
    (tmp_path / "rules.yaml").write_text(RULES)
    config = tmp_path / "piggywatch.yaml"
    config.write_text(f"""\
targets:
  - name: main
    dsn: '{cluster.dsn(dbname=DEMO_DATABASE, user=MONITOR_ROLE)}'
    collectors:
      connections: {{interval: 1s}}
      database: {{enabled: false}}
      statements: {{enabled: false}}
      tables: {{enabled: false}}
rule_files: [rules.yaml]
evaluation_interval: 1s
state: sqlite://{state}
logging: {{level: INFO, format: json}}
""")
    return config


def start_must_fail(config: Path, *, check_exits: int = 1) -> str:
    """Run the daemon; it must exit 1 by itself, and `check` must have said so first
    (without creating or changing the file; a lock held now is only its warning). Everything
    the daemon printed."""
    before = sorted((p.name, p.stat().st_size) for p in config.parent.rglob("*")
                    if p.is_file())
    checked = subprocess.run([sys.executable, "-m", "piggywatch", "check", "--config",
                              str(config)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == check_exits, f"check:\n{checked.stdout}{checked.stderr}"
    assert "Traceback" not in checked.stderr, checked.stderr
    assert "state file" in checked.stderr, checked.stderr
    assert sorted((p.name, p.stat().st_size) for p in config.parent.rglob("*")
                  if p.is_file()) == before, "check changed the files"
    result = subprocess.run(
        [sys.executable, "-m", "piggywatch", "run", "--config", str(config), "--listen",
         f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, f"exit {result.returncode}:\n{output}"
    assert "Traceback" not in output, output
    return output


def assert_one_clear_error(output: str, state: Path, *what: str) -> None:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert str(state) in errors[0], output
    for phrase in what:
        assert phrase in errors[0], f"{phrase!r} not in {errors[0]!r}"


def real_state_file(tmp_path: Path, cluster: ThrowawayCluster) -> Path:
    """A state file the daemon wrote itself (run until ready, stopped cleanly)."""
    workdir = tmp_path / "first-run"
    workdir.mkdir()
    state = workdir / "state.db"
    with DaemonProcess(write_config(workdir, cluster, state), workdir) as daemon:
        daemon.terminate()
    assert state.stat().st_size > 0
    return state


def test_a_state_file_of_garbage_bytes_stops_the_start_and_a_moved_aside_one_starts_fresh(
        pg_cluster: ThrowawayCluster, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    state.write_bytes(random.Random(11).randbytes(64 * 1024))
    config = write_config(tmp_path, pg_cluster, state)
    output = start_must_fail(config)
    assert_one_clear_error(output, state, "not a SQLite database", "Move it aside")
    # What the message says to do works, and the daemon says it started from nothing.
    state.rename(tmp_path / "state.db.broken")
    with DaemonProcess(config, tmp_path) as daemon:
        daemon.terminate()
    assert f"no state file at {state}" in daemon.stderr()
    assert "empty state" in daemon.stderr()


def test_a_truncated_state_file_stops_the_start(pg_cluster: ThrowawayCluster,
                                                tmp_path: Path) -> None:
    good = real_state_file(tmp_path, pg_cluster)
    state = tmp_path / "state.db"
    data = good.read_bytes()
    state.write_bytes(data[:len(data) // 2])
    output = start_must_fail(write_config(tmp_path, pg_cluster, state))
    assert_one_clear_error(output, state, "damaged", "Move it aside")


def test_a_state_path_that_is_a_directory_stops_the_start(pg_cluster: ThrowawayCluster,
                                                          tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    state.mkdir()
    output = start_must_fail(write_config(tmp_path, pg_cluster, state))
    assert_one_clear_error(output, state, "is a directory")


def test_a_state_directory_that_is_a_file_stops_the_start(pg_cluster: ThrowawayCluster,
                                                          tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory\n")
    state = tmp_path / "data" / "state.db"
    output = start_must_fail(write_config(tmp_path, pg_cluster, state))
    assert_one_clear_error(output, state, f"{tmp_path / 'data'} is not a directory")


def test_a_state_file_another_process_keeps_locked_stops_the_start(
        pg_cluster: ThrowawayCluster, tmp_path: Path) -> None:
    """A second PiggyWatch on the same file, or a sqlite3 session left in a transaction."""
    state = real_state_file(tmp_path, pg_cluster)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "c.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\ntime.sleep(120)\n",
         str(state)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        output = start_must_fail(write_config(tmp_path, pg_cluster, state), check_exits=0)
    finally:
        holder.kill()
        holder.wait()
    assert_one_clear_error(output, state, "locked by another process")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of our own, to remount read-only and back."""
    mount = tmp_path / "volume"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN): "
                    f"{done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


def test_a_state_file_on_a_read_only_file_system_stops_the_start(
        pg_cluster: ThrowawayCluster, tmp_path: Path, tmpfs: Path) -> None:
    state = tmpfs / "state.db"
    shutil.copy(real_state_file(tmp_path, pg_cluster), state)
    remount(tmpfs, "ro")
    output = start_must_fail(write_config(tmp_path, pg_cluster, state))
    assert_one_clear_error(output, state, "read-only file system")


def state_up(daemon: DaemonProcess) -> float | None:
    return value(daemon.metrics(), "piggywatch_state_database_up")


def wait_unready(daemon: DaemonProcess, *reason: str) -> str:
    found: list[str] = []

    def unready() -> bool:
        response = daemon.get("/readyz")
        if response.status_code == 503 and all(r in response.text for r in reason):
            found.append(response.text)
            return True
        return False

    daemon.wait_until(unready, 15, f"/readyz 503 naming {reason}")
    return found[0]


def test_a_state_file_deleted_while_running_shows_in_the_metric_and_readyz(
        pg_cluster: ThrowawayCluster, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    with DaemonProcess(write_config(tmp_path, pg_cluster, state), tmp_path) as daemon:
        assert state_up(daemon) == 1.0
        for path in tmp_path.glob("state.db*"):
            path.unlink()
        daemon.wait_for_metric(lambda v: value(v, "piggywatch_state_database_up") == 0.0, 15,
                               "piggywatch_state_database_up 0")
        text = wait_unready(daemon, str(state), "deleted")
        assert "restart" in text
        assert daemon.proc is not None and daemon.proc.poll() is None
        daemon.terminate()
    assert "state file" in daemon.stderr() and "deleted" in daemon.stderr()


def test_a_state_directory_replaced_while_running_shows_and_recovers_when_put_back(
        pg_cluster: ThrowawayCluster, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    state = data / "state.db"
    with DaemonProcess(write_config(tmp_path, pg_cluster, state), tmp_path) as daemon:
        assert state_up(daemon) == 1.0
        data.rename(tmp_path / "data.old")
        data.mkdir()  # an empty volume mounted over the old one, say
        daemon.wait_for_metric(lambda v: value(v, "piggywatch_state_database_up") == 0.0, 15,
                               "piggywatch_state_database_up 0")
        wait_unready(daemon, str(state))
        data.rmdir()
        (tmp_path / "data.old").rename(data)
        daemon.wait_for_metric(lambda v: value(v, "piggywatch_state_database_up") == 1.0, 15,
                               "piggywatch_state_database_up 1 again")
        daemon.wait_until(lambda: daemon.get("/readyz").status_code == 200, 15,
                          "/readyz 200 again")
        daemon.terminate()


def test_a_state_volume_turned_read_only_while_running_shows_and_recovers(
        pg_cluster: ThrowawayCluster, tmp_path: Path, tmpfs: Path) -> None:
    """The kernel refuses to remount a file system read-only while files on it are open for
    writing (EBUSY), so the volume is made read-only the other way a user meets: a read-only
    mount of the same directory put over it (the path then leads to the same file, on a
    mount that cannot be written)."""
    state = tmpfs / "state.db"
    with DaemonProcess(write_config(tmp_path, pg_cluster, state), tmp_path) as daemon:
        assert state_up(daemon) == 1.0
        subprocess.run(["mount", "--bind", str(tmpfs), str(tmpfs)], check=True)
        try:
            remount(tmpfs, "bind,ro")
            daemon.wait_for_metric(lambda v: value(v, "piggywatch_state_database_up") == 0.0,
                                   15, "piggywatch_state_database_up 0")
            wait_unready(daemon, str(state), "read-only file system")
        finally:
            subprocess.run(["umount", str(tmpfs)], check=True)
        started = time.monotonic()
        daemon.wait_for_metric(lambda v: value(v, "piggywatch_state_database_up") == 1.0, 15,
                               "piggywatch_state_database_up 1 again")
        daemon.wait_until(lambda: daemon.get("/readyz").status_code == 200, 15,
                          "/readyz 200 again")
        assert time.monotonic() - started < 15
        daemon.terminate()
    assert "read-only file system" in daemon.stderr()
    assert f"state file {state} is usable again" in daemon.stderr()
