"""Synthetic PiggyBong traffic, so the demo and the tests have something to monitor."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Self

import psycopg
from psycopg.rows import TupleRow

log = logging.getLogger(__name__)

_API_NAME = "piggybong-api"
_WORKER_NAME = "piggybong-worker"
_SEED_USERS = 2000
_SERVER_ERRORS = (500, 502, 503, 504)
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 2.0
# Keeps every statement short, so stop() can join the threads promptly.
_CONNECT_OPTIONS = "-c statement_timeout=1000"


class SyntheticWorkload:
    """Light, varied PiggyBong-like load from background threads.

    Even-numbered workers play the public API (``application_name=piggybong-api``):
    sign-ups, sign-ins, news browsing, feeds and purchases, each request also logged to
    ``edge_functions_logs`` with a realistic duration and about 2% 5xx. Odd-numbered
    workers play the job runner (``piggybong-worker``): reports, plan upgrades, news
    publishing and log retention. Workers reconnect with backoff when the database goes
    away, so the load survives restarts; errors are logged at DEBUG only.
    """

    def __init__(self, dsn: str, *, workers: int = 2, pause: float = 0.05) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._dsn = dsn
        self._workers = workers
        self._pause = pause
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the worker threads."""
        if self._threads:
            raise RuntimeError("the workload is already running")
        self._stopping.clear()
        for index in range(self._workers):
            name = _API_NAME if index % 2 == 0 else _WORKER_NAME
            thread = threading.Thread(
                target=self._run, args=(name,), name=f"{name}-{index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Signal the workers and wait up to ``timeout`` seconds in total for them."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        if stuck:
            log.debug("workload threads still busy after stop(): %s", ", ".join(stuck))
        self._threads = []

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, application_name: str) -> None:
        rng = random.Random()
        backoff = _FIRST_BACKOFF
        client: _Client | None = None
        while not self._stopping.is_set():
            try:
                if client is None:
                    client = self._open_client(application_name, rng)
                client.step(api=application_name == _API_NAME)
                backoff = _FIRST_BACKOFF
            except psycopg.Error as exc:
                log.debug("%s: %s", application_name, exc)
                if client is None or client.conn.broken or client.conn.closed:
                    if client is not None:
                        client.conn.close()
                        client = None
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
            except Exception:
                # A load generator must outlive its own bugs; they'd show up as missing load.
                log.debug("%s: unexpected error", application_name, exc_info=True)
            self._stopping.wait(self._pause)
        if client is not None:
            client.conn.close()

    def _open_client(self, application_name: str, rng: random.Random) -> _Client:
        conn = psycopg.connect(
            self._dsn,
            application_name=application_name,
            autocommit=True,
            connect_timeout=2,
            options=_CONNECT_OPTIONS,
        )
        try:
            return _Client(conn, rng)
        except BaseException:
            conn.close()
            raise


class _Client:
    """One worker's connection plus what it knows about the data."""

    def __init__(self, conn: psycopg.Connection[TupleRow], rng: random.Random) -> None:
        self.conn = conn
        self._rng = rng
        row = conn.execute("SELECT max(id) FROM users").fetchone()
        self._max_user_id = int(row[0]) if row and row[0] is not None else _SEED_USERS
        self._artist_ids = [
            int(r[0]) for r in conn.execute("SELECT id FROM artists ORDER BY name").fetchall()
        ] or [1]
        self._recent_emails: list[str] = []
        self._api_actions: list[tuple[str, Callable[[], int], int]] = [
            ("artist-news", self._browse_artist_news, 30),
            ("news-feed", self._feed, 15),
            ("auth-signin", self._sign_in, 15),
            ("purchase-checkout", self._purchase, 8),
            ("purchase-history", self._purchase_history, 7),
            ("auth-signup", self._sign_up, 5),
            ("artist-directory", self._artist_directory, 5),
        ]
        self._worker_actions: list[tuple[Callable[[], object], int]] = [
            (self._signup_report, 20),
            (self._revenue_report, 20),
            (self._edge_health_report, 25),
            (self._dormant_users_report, 10),
            (self._plan_upgrade, 10),
            (self._publish_news, 10),
            (self._log_retention, 5),
        ]

    def step(self, *, api: bool) -> None:
        if api:
            function_name, action, _ = self._rng.choices(
                self._api_actions, weights=[w for *_, w in self._api_actions]
            )[0]
            self._invoke_edge_function(function_name, action)
        else:
            job, _ = self._rng.choices(
                self._worker_actions, weights=[w for _, w in self._worker_actions]
            )[0]
            job()

    def _invoke_edge_function(self, function_name: str, action: Callable[[], int]) -> None:
        started = time.perf_counter()
        status = action()
        # Real edge functions add cold starts and network time on top of the query.
        duration_ms = (time.perf_counter() - started) * 1000 + self._rng.lognormvariate(3.3, 0.6)
        if self._rng.random() < 0.02:
            status = self._rng.choice(_SERVER_ERRORS)
        self.conn.execute(
            "INSERT INTO edge_functions_logs (function_name, duration_ms, status_code)"
            " VALUES (%s, %s, %s)",
            (function_name, round(duration_ms, 2), status),
        )

    def _random_user_id(self) -> int:
        return self._rng.randint(1, self._max_user_id)

    def _random_artist_id(self) -> int:
        return self._rng.choice(self._artist_ids)

    def _browse_artist_news(self) -> int:
        rows = self.conn.execute(
            "SELECT id, title, published_at FROM news WHERE artist_id = %s"
            " ORDER BY published_at DESC LIMIT 20",
            (self._random_artist_id(),),
        ).fetchall()
        if rows and self._rng.random() < 0.5:
            self.conn.execute(
                "SELECT title, body, published_at FROM news WHERE id = %s",
                (self._rng.choice(rows)[0],),
            ).fetchone()
        return 200

    def _feed(self) -> int:
        self.conn.execute(
            "SELECT n.id, n.title, a.name, n.published_at FROM news n"
            " JOIN artists a ON a.id = n.artist_id"
            " WHERE n.artist_id IN (SELECT p.artist_id FROM purchases p WHERE p.user_id = %s)"
            " ORDER BY n.published_at DESC LIMIT 20",
            (self._random_user_id(),),
        ).fetchall()
        return 200

    def _sign_in(self) -> int:
        if self._recent_emails and self._rng.random() < 0.3:
            email = self._rng.choice(self._recent_emails)
        else:
            email = f"fan{self._rng.randint(1, _SEED_USERS)}@example.com"
        row = self.conn.execute(
            "SELECT id, display_name, plan FROM users WHERE email = %s", (email,)
        ).fetchone()
        if row is None:
            return 401
        self.conn.execute("UPDATE users SET last_sign_in_at = now() WHERE id = %s", (row[0],))
        return 200

    def _sign_up(self) -> int:
        handle = uuid.uuid4().hex[:10]
        email = f"{handle}@fans.example"
        row = self.conn.execute(
            "INSERT INTO users (email, display_name) VALUES (%s, %s) RETURNING id",
            (email, f"fan_{handle}"),
        ).fetchone()
        if row is not None:
            self._max_user_id = max(self._max_user_id, int(row[0]))
        self._recent_emails = [*self._recent_emails[-49:], email]
        return 201

    def _purchase(self) -> int:
        self.conn.execute(
            "INSERT INTO purchases (user_id, artist_id, amount_cents, currency)"
            " VALUES (%s, %s, %s, %s)",
            (
                self._random_user_id(),
                self._random_artist_id(),
                self._rng.choice((499, 999, 1499, 2999, 4999)),
                self._rng.choice(("USD", "USD", "USD", "KRW", "JPY")),
            ),
        )
        return 201

    def _purchase_history(self) -> int:
        self.conn.execute(
            "SELECT p.id, a.name, p.amount_cents, p.currency, p.created_at FROM purchases p"
            " JOIN artists a ON a.id = p.artist_id WHERE p.user_id = %s"
            " ORDER BY p.created_at DESC LIMIT 10",
            (self._random_user_id(),),
        ).fetchall()
        return 200

    def _artist_directory(self) -> int:
        self.conn.execute("SELECT id, name, agency, debut_date FROM artists ORDER BY name")
        return 200

    def _signup_report(self) -> None:
        self.conn.execute(
            "SELECT date_trunc('day', created_at) AS day, count(*) FROM users"
            " WHERE created_at > now() - interval '7 days' GROUP BY 1 ORDER BY 1"
        ).fetchall()

    def _revenue_report(self) -> None:
        self.conn.execute(
            "SELECT a.name, sum(p.amount_cents) AS revenue FROM purchases p"
            " JOIN artists a ON a.id = p.artist_id"
            " WHERE p.created_at > now() - interval '1 day'"
            " GROUP BY a.name ORDER BY revenue DESC LIMIT 10"
        ).fetchall()

    def _edge_health_report(self) -> None:
        self.conn.execute(
            "SELECT function_name, count(*) AS calls,"
            " count(*) FILTER (WHERE status_code >= 500) AS errors,"
            " percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms"
            " FROM edge_functions_logs WHERE created_at > now() - interval '15 minutes'"
            " GROUP BY function_name"
        ).fetchall()

    def _dormant_users_report(self) -> None:
        self.conn.execute(
            "SELECT plan, count(*) FROM users"
            " WHERE last_sign_in_at IS NULL OR last_sign_in_at < now() - interval '30 days'"
            " GROUP BY plan"
        ).fetchall()

    def _plan_upgrade(self) -> None:
        self.conn.execute(
            "UPDATE users SET plan = 'premium' WHERE id = %s AND plan = 'free'",
            (self._random_user_id(),),
        )

    def _publish_news(self) -> None:
        self.conn.execute(
            "INSERT INTO news (artist_id, title, body) VALUES (%s, %s, %s)",
            (
                self._random_artist_id(),
                self._rng.choice(("Comeback teaser", "New single out", "Fan meeting")),
                "Fans are excited about the latest update.",
            ),
        )

    def _log_retention(self) -> None:
        self.conn.execute(
            "DELETE FROM edge_functions_logs WHERE created_at < now() - interval '7 days'"
        )
