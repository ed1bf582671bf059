"""Wiring and lifecycle: collectors on a schedule, the HTTP server, signals, readiness."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from piggywatch import __version__
from piggywatch.collectors.postgres.statements import StatementsCollector
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.config import Settings
from piggywatch.exporter import build_registry
from piggywatch.jobs import (
    CollectorJob,
    build_collectors,
    build_source_collectors,
    state_file,
)
from piggywatch.observability import redactor
from piggywatch.rules.alerts import AlertEvent
from piggywatch.rules.loader import expand_globs
from piggywatch.rules.manager import NoData, RuleManager
from piggywatch.rules.state_db import AlertStateDB
from piggywatch.selfmetrics import SelfMetrics
from piggywatch.server import Access, Endpoints, HttpServer, split_listen
from piggywatch.store import MemoryStore
from piggywatch.store.history import CombinedSource, History

if TYPE_CHECKING:
    from piggywatch.delivery import AlertDelivery

log = logging.getLogger(__name__)

# How long a stop may take before worker threads stuck in a network call are abandoned.
STOP_GRACE_SECONDS = 3.0
# How often rule files are checked for changes (SIGHUP reloads at once).
RULE_FILE_POLL_SECONDS = 5.0
# Full-resolution history kept in memory; rules reaching further back read the durable,
# downsampled history for the older part.
MEMORY_WINDOW = 3600.0 + 60.0
# How often the durable history takes the kept series' new points.
HISTORY_RECORD_SECONDS = 300.0
# Expiry rewrites pages too; once an hour keeps the state file's disk writes down.
HISTORY_EXPIRE_SECONDS = 3600.0
# How often the delivery metrics (incidents, outbox depth) are refreshed.
DELIVERY_METRICS_SECONDS = 5.0


class Daemon:
    """The running PiggyWatch: scheduler, collectors, store and HTTP server."""

    def __init__(self, settings: Settings, *, listen: str | None = None,
                 base_dir: Path | None = None) -> None:
        self.settings = settings
        self.base_dir = base_dir or Path.cwd()
        redactor.add(settings.secrets())
        self.store = MemoryStore()
        self.self_metrics = SelfMetrics(self.store)
        self.targets: list[PostgresTarget] = []
        self.jobs: list[CollectorJob] = []
        self._statements: dict[str, StatementsCollector] = {}
        for config in settings.targets:
            target = PostgresTarget(config.name, config.dsn.get_secret_value(),
                                    connect_timeout=config.connect_timeout)
            self.targets.append(target)
            for collector, interval in build_collectors(config, target):
                self.store.register(collector.specs())
                self.self_metrics.add_job(target.name, collector.name)
                self.jobs.append(CollectorJob(target.name, target, collector, interval,
                                              self.store, self.self_metrics))
                if isinstance(collector, StatementsCollector):
                    self._statements[target.name] = collector
        targets = {t.name: t for t in self.targets}
        for owner, bound, collector, interval in build_source_collectors(
                settings, targets, self.base_dir):
            self.store.register(collector.specs())
            self.self_metrics.add_job(owner, collector.name)
            self.jobs.append(CollectorJob(owner, bound, collector, interval, self.store,
                                          self.self_metrics))
        self.self_metrics.publish(time.time())
        self.history: History | None = None
        self._history_expired_at = 0.0
        self.delivery = self._build_delivery()
        self.rules = self._build_rules()
        self._rule_files: dict[Path, float] = {}
        self._reload_requested = threading.Event()
        # Set once the dispatcher runs: from then on a rule reload reconciles incidents.
        self._delivering = False
        self.listen = listen or settings.server.listen
        self.http: HttpServer | None = None
        self._scheduler: Any = None
        self._stop = threading.Event()

    def readiness(self) -> tuple[bool, str]:
        """Ready once every target has had its first sampling attempt."""
        attempted = {job.owner for job in self.jobs if job.attempted}
        waiting = sorted({job.owner for job in self.jobs} - attempted)
        if waiting:
            return False, "waiting for the first sample of: " + ", ".join(waiting)
        return True, "ready"

    def statements_report(self) -> dict[str, Any]:
        """The top statements of every target, for GET /api/v1/statements."""
        return {name: [s.as_dict() for s in collector.top_statements()]
                for name, collector in self._statements.items()}

    def sample_once(self) -> None:
        """Run every collector once, in order, without the scheduler or the server."""
        for job in self.jobs:
            job.run()
        for target in self.targets:
            target.close()

    def state_path(self) -> Path:
        """The state file (alert state, history, delivery), relative to the config's dir."""
        return state_file(self.settings, self.base_dir)

    def _build_delivery(self) -> AlertDelivery | None:
        if self.settings.route is None:
            return None
        # Imported only when delivery is configured: the notifiers' libraries cost memory.
        from piggywatch.delivery import AlertDelivery

        delivery = AlertDelivery(self.settings, self.state_path())
        delivery.register(self.store)
        return delivery

    def _build_rules(self) -> RuleManager | None:
        if not self.settings.rule_files:
            return None
        state_path = self.state_path()
        no_data = self.settings.no_data
        self.history = History(state_path)
        source = CombinedSource(self.store, self.history, lambda: MEMORY_WINDOW)
        sink = self.delivery.dispatcher.handle if self.delivery else log_alert_event
        return RuleManager(
            self.store, source, sink,
            state_db=AlertStateDB(state_path),
            default_interval=self.settings.evaluation_interval,
            no_data=NoData(no_data.default),
            no_data_groups={g: NoData(p) for g, p in no_data.groups.items()},
            external_labels=self.settings.external_labels,
            external_url=self.settings.external_url,
        )

    def rule_paths(self) -> list[Path]:
        """The rule files the configured globs match now."""
        return expand_globs(self.settings.rule_files, self.base_dir)

    def reload_rules(self) -> bool:
        """(Re)load rule files; on a problem the running rules stay. Returns success."""
        if self.rules is None:
            return True
        paths = self.rule_paths()
        self._rule_files = _mtimes(paths)
        problems = self.rules.load(paths)
        # Memory holds the last hour at full resolution; selectors of rules that look
        # further back (offset 7d, [6h]) are also kept, downsampled, in the durable history.
        self.store.set_retention(MEMORY_WINDOW)
        if self.history is not None:
            self.history.keep(self.rules.long_range_selectors(MEMORY_WINDOW))
        if self._scheduler is not None:
            self._schedule_rule_groups()
            if not problems and self.delivery is not None and self._delivering:
                # Incidents of rules that were removed or renamed would otherwise stay open
                # for ever, repeating and escalating: they resolve now.
                from piggywatch.delivery import firing_events

                firing = firing_events(self.rules)
                self.delivery.dispatcher.reconcile(firing or [], time.time())
        return not problems

    def _schedule_rule_groups(self) -> None:
        assert self.rules is not None
        for job in self._scheduler.get_jobs():
            if job.id.startswith("rules:"):
                job.remove()
        for group in self.rules.groups():
            interval = self.rules.interval(group)
            self._scheduler.add_job(
                self.rules.evaluate_group, "interval", args=[group.name], seconds=interval,
                id=f"rules:{group.name}", name=f"rules:{group.name}",
                misfire_grace_time=max(1, int(interval / 2)))

    def _record_history(self) -> None:
        if self.history is None:
            return
        now = time.time()
        try:
            self.history.record(self.store, now)
            if now - self._history_expired_at >= HISTORY_EXPIRE_SECONDS:
                self.history.expire(now)
                self._history_expired_at = now
        except Exception:
            log.exception("could not write the durable history")

    def _check_rule_files(self) -> None:
        if self._reload_requested.is_set() or _mtimes(self.rule_paths()) != self._rule_files:
            self._reload_requested.clear()
            log.info("reloading rule files")
            self.reload_rules()

    def start(self) -> None:
        """Start the HTTP server and the schedule (every job runs once at once)."""
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        from piggywatch.api import DaemonApi

        host, port = split_listen(self.listen)
        server = self.settings.server
        access = Access.from_config(server)
        if not access.api_token:
            log.warning("server.api_token is empty: every /api/v1 call is refused (401)")
        api = DaemonApi(self.rules, self.delivery.dispatcher if self.delivery else None)
        endpoints = Endpoints(build_registry(self.store), ready=self.readiness,
                              statements=self.statements_report, alerting=api, access=access)
        tls = (server.tls.cert_file, server.tls.key_file) if server.tls else None
        self.http = HttpServer(endpoints, host, port, tls=tls)
        self.http.start()
        workers = max(4, min(32, len(self.jobs) + 2))
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=workers)},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone="UTC",
        )
        start = time.time()
        for job in self.jobs:
            self._scheduler.add_job(
                job.run, "interval", seconds=job.interval, id=job.source, name=job.source,
                next_run_time=_utc(start),
                # A cycle that could not start on time is skipped, not run late in a burst.
                misfire_grace_time=max(1, int(job.interval / 2)),
            )
        if self.rules is not None:
            self.reload_rules()
            self._schedule_rule_groups()
            self._scheduler.add_job(self._check_rule_files, "interval",
                                    seconds=RULE_FILE_POLL_SECONDS, id="rule-files",
                                    name="rule-files", misfire_grace_time=1)
            self._scheduler.add_job(self._record_history, "interval",
                                    seconds=HISTORY_RECORD_SECONDS, id="history",
                                    name="history", misfire_grace_time=60)
        if self.delivery is not None:
            from piggywatch.delivery import firing_events

            self.delivery.start(firing_events(self.rules))
            self._delivering = True
            self._scheduler.add_job(self.delivery.publish, "interval", args=[self.store],
                                    seconds=DELIVERY_METRICS_SECONDS, id="delivery-metrics",
                                    name="delivery-metrics", next_run_time=_utc(start),
                                    misfire_grace_time=5)
        self._scheduler.start()
        log.info("piggywatch %s listening on %s://%s/metrics with %d collectors on %d "
                 "targets", __version__, "https" if tls else "http",
                 f"{split_listen(self.listen)[0]}:{self.http.port}", len(self.jobs),
                 len(self.targets))

    def stop(self) -> None:
        """Stop scheduling, cancel running queries, close connections and the server."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        for target in self.targets:
            target.cancel()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        if self.delivery is not None:
            # What cannot go out in the grace time stays in the outbox for the next start.
            self.delivery.stop(STOP_GRACE_SECONDS - 1.0)
        while time.monotonic() < deadline and self.busy():
            time.sleep(0.05)
        for target in self.targets:
            target.close()
        for job in self.jobs:
            close = getattr(job.collector, "close", None)
            if close is not None:
                close()
        if self.http is not None:
            self.http.stop()
        if self.history is not None:
            # Keep what memory holds, so long-range rules see it after a restart.
            self._record_history()

    def unreachable(self) -> dict[str, str]:
        """Targets whose database could not be reached, with the reason."""
        return {t.name: t.last_error or "unknown error" for t in self.targets if t.up is False}

    def busy(self) -> bool:
        """Whether any sampling cycle is still running."""
        return any(job.running for job in self.jobs)

    def _hangup(self, signum: int, frame: FrameType | None) -> None:
        # Rule files are reloaded on SIGHUP; other configuration needs a restart.
        log.info("SIGHUP received: reloading rule files")
        self._reload_requested.set()

    def request_stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        """Signal handler: ask the main loop to stop."""
        log.info("received %s, stopping", signal.Signals(signum).name)
        self._stop.set()

    def run_forever(self) -> bool:
        """Run until SIGTERM/SIGINT, then stop. SIGHUP reloads the rule files.

        Returns False when a sampling cycle is still blocked in a network call after the
        grace period; the caller should then leave with os._exit, as that thread would
        otherwise hold the interpreter's exit.
        """
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self._hangup)
        self.start()
        try:
            while not self._stop.wait(0.5):
                if self._reload_requested.is_set():
                    self._check_rule_files()
        finally:
            self.stop()
        log.info("stopped")
        return not self.busy()


def exit_now_if_stuck(clean: bool) -> None:
    """Leave at once when a worker is stuck, instead of waiting for it at interpreter exit."""
    if not clean:
        logging.shutdown()
        os._exit(0)


def _mtimes(paths: list[Path]) -> dict[Path, float]:
    found = {}
    for path in paths:
        try:
            found[path] = path.stat().st_mtime
        except OSError:
            found[path] = -1.0
    return found


def log_alert_event(event: AlertEvent) -> None:
    """The alerting side without a configured route: the transition is only logged (by the
    manager)."""


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
