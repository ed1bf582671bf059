"""Wiring and lifecycle: collectors on a schedule, the HTTP server, signals, readiness."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from piggywatch import __version__
from piggywatch import leadership as leadership_metrics
from piggywatch.alerting.inbox import Inbox
from piggywatch.allocator import release_free_memory
from piggywatch.collectors.base import Report, ServesReports
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.config import Settings
from piggywatch.exporter import build_registry
from piggywatch.jobs import (
    CollectorJob,
    build_collectors,
    build_source_collectors,
)
from piggywatch.leadership import AdvisoryLockLeadership, Leadership, SoleLeader
from piggywatch.observability import redactor
from piggywatch.rules.alerts import AlertEvent
from piggywatch.rules.loader import (
    AlertingRule,
    Rule,
    RuleFileError,
    RuleGroup,
    expand_globs,
)
from piggywatch.rules.manager import NoData, RuleManager, rule_keys
from piggywatch.rules.promql import PromQLError, lookback_window, names_read_over_time
from piggywatch.rules.state_db import AlertStateDB
from piggywatch.rules.templating import template_queries
from piggywatch.selfmetrics import SelfMetrics
from piggywatch.server import Access, Endpoints, HttpServer, split_listen
from piggywatch.state import PostgresState, StateStore, state_from_url
from piggywatch.store import MemoryStore, Sample, labels_of
from piggywatch.store.history import CombinedSource, History
from piggywatch.store.series import LabelMatcher, MatchOp

if TYPE_CHECKING:
    from piggywatch.delivery import AlertDelivery

log = logging.getLogger(__name__)

# How long a stop may take before worker threads stuck in a network call are abandoned.
STOP_GRACE_SECONDS = 3.0
# How often rule files are checked for changes (SIGHUP reloads at once).
RULE_FILE_POLL_SECONDS = 5.0
# Full-resolution history kept in memory at most; rules reaching further back read the
# durable, downsampled history for the older part.
MEMORY_WINDOW = 3600.0 + 60.0
# How often the durable history takes the kept series' new points.
HISTORY_RECORD_SECONDS = 300.0
# Memory keeps what the loaded rules read (plus this), not always the hour: with the shipped
# rules (at most [10m]) that is 11 minutes, and at statements top_k 5000 the store's points
# are most of the RSS (issue 13). Never less than a history recording period and its
# misfire grace, since the history copies the kept series' new points from memory.
MEMORY_WINDOW_SLACK = 60.0
MIN_MEMORY_WINDOW = HISTORY_RECORD_SECONDS + 2 * MEMORY_WINDOW_SLACK
# And that window only for the metrics whose past something reads (``history_names``); the
# other series keep what an instant read needs, exact this far behind the newest sample: a
# rule group (its templates' queries too) reads at the time its evaluation started.
INSTANT_READS_WINDOW = MEMORY_WINDOW_SLACK
# Expiry rewrites pages too; once an hour keeps the state file's disk writes down.
HISTORY_EXPIRE_SECONDS = 3600.0
# How often the pages malloc holds free go back to the system (a trim took 6 ms with 240 MB
# of heap at statements top_k 5000, 0.2 ms at top_k 100).
RELEASE_MEMORY_SECONDS = 60.0
# What the alerting API answers while this replica starts or stops leading.
CHANGING = "leadership is changing; retry in a few seconds"
# How often the delivery metrics (incidents, outbox depth) are refreshed.
DELIVERY_METRICS_SECONDS = 5.0
# How often a SQLite state file is checked (still there, writable) for the metric and log.
STATE_CHECK_SECONDS = 2.0
STATE_STORE_KEY = "piggywatch/state"


class ListenError(Exception):
    """The HTTP server cannot listen where it is told to; the message says where and why."""


class Daemon:
    """The running PiggyWatch: scheduler, collectors, store and HTTP server."""

    def __init__(self, settings: Settings, *, listen: str | None = None,
                 base_dir: Path | None = None) -> None:
        self.settings = settings
        self.base_dir = base_dir or Path.cwd()
        redactor.add(settings.secrets())
        self.store = MemoryStore()
        self.self_metrics = SelfMetrics(self.store)
        self.listen = listen or settings.server.listen
        self.state = state_from_url(settings.state, self.base_dir, schema=settings.state_schema,
                                    takeover_after=settings.ha.takeover_after)
        self.leadership = self._build_leadership()
        self.leadership.on_change = self._publish_leadership
        self.store.register(leadership_metrics.SPECS)
        self.targets: list[PostgresTarget] = []
        self.jobs: list[CollectorJob] = []
        # API reports the collectors serve: report name -> target -> the report.
        self._reports: dict[str, dict[str, Report]] = {}
        for config in settings.targets:
            target = PostgresTarget(config.name, config.dsn.get_secret_value(),
                                    connect_timeout=config.connect_timeout)
            self.targets.append(target)
            for collector, interval in build_collectors(config, target):
                self.store.register(collector.specs())
                self.self_metrics.add_job(target.name, collector.name, target)
                self.jobs.append(CollectorJob(target.name, target, collector, interval,
                                              self.store, self.self_metrics))
                if isinstance(collector, ServesReports):
                    for report, build in collector.reports().items():
                        self._reports.setdefault(report, {})[target.name] = build
        targets = {t.name: t for t in self.targets}
        for owner, bound, collector, interval in build_source_collectors(
                settings, targets, self.state, self.leadership.is_leader):
            self.store.register(collector.specs())
            self.self_metrics.add_job(owner, collector.name)
            self.jobs.append(CollectorJob(owner, bound, collector, interval, self.store,
                                          self.self_metrics))
        self.self_metrics.publish(time.time())
        # Opened while this replica leads (always, with SQLite state), closed when it stops.
        self.history: History | None = None
        self.delivery: AlertDelivery | None = None
        self._leader_lock = threading.Lock()
        self._history_expired_at = 0.0
        # The rules' sink: delivery's inbox, kept across leaderships (None: no delivery).
        self.inbox: Inbox | None = None
        if settings.route is not None:
            # Imported only when delivery is configured: the notifiers' libraries cost memory.
            from piggywatch.delivery import register_delivery_metrics

            register_delivery_metrics(self.store)
            self.inbox = Inbox()
        # Until the rules are loaded: the store's default, about the hour.
        self._memory_window = MEMORY_WINDOW
        # The names whose whole memory window the store keeps (None: all of them).
        self._kept: frozenset[str] | None = None
        self._series = CombinedSource(self.store, None, lambda: self._memory_window)
        self.rules = self._build_rules()
        if self.rules is not None:
            self.rules.suspend()  # until this replica is elected (at once, with SQLite)
        self._rule_files: dict[Path, float] = {}
        self._reload_requested = threading.Event()
        self.http: HttpServer | None = None
        self._endpoints: Endpoints | None = None
        self._scheduler: Any = None
        self._stop = threading.Event()
        self._state_problem = ""

    def readiness(self) -> tuple[bool, str]:
        """Ready once every target has had its first sampling attempt."""
        state_problem = self.state.problem()  # a SQLite file deleted or read-only
        if state_problem:
            return False, state_problem
        if self.rules is not None and self.rules.last_problems:
            # The last good rules still run, but what is on disk is not what runs.
            return False, ("the last rule file reload failed (the rules loaded before still "
                           f"run): {self.rules.last_problems[0]}")
        attempted = {job.owner for job in self.jobs if job.attempted}
        waiting = sorted({job.owner for job in self.jobs} - attempted)
        if waiting:
            return False, "waiting for the first sample of: " + ", ".join(waiting)
        return True, "ready"

    def statements_report(self) -> dict[str, Any]:
        """The top statements of every target, for GET /api/v1/statements."""
        return {name: build() for name, build in self._reports.get("statements", {}).items()}

    def sample_once(self) -> None:
        """Run every collector once, in order, without the scheduler or the server."""
        for job in self.jobs:
            job.run()
        for target in self.targets:
            target.close()

    def _build_leadership(self) -> Leadership:
        if not isinstance(self.state, PostgresState):
            return SoleLeader()
        ha = self.settings.ha
        return AdvisoryLockLeadership(self.state,
                                      advertise_url=ha.advertise_url or self._own_url())

    def _own_url(self) -> str:
        host, port = split_listen(self.listen)
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        scheme = "https" if self.settings.server.tls else "http"
        return f"{scheme}://{host}:{port}"

    def _build_rules(self) -> RuleManager | None:
        if not self.settings.rule_files:
            return None
        no_data = self.settings.no_data
        return RuleManager(
            self.store, self._series, self.inbox if self.inbox is not None else _no_delivery,
            default_interval=self.settings.evaluation_interval,
            no_data=NoData(no_data.default),
            no_data_groups={g: NoData(p) for g, p in no_data.groups.items()},
            external_labels=self.settings.external_labels,
            external_url=self.settings.external_url,
        )

    def rule_paths(self) -> list[Path]:
        """The rule files the configured globs match now."""
        return expand_globs(self.settings.rule_files, self.base_dir)

    # --- leadership -------------------------------------------------------------------

    def _leader_state(self) -> StateStore:
        """The state as the leader writes it: fenced by the leadership lock with PostgreSQL."""
        if isinstance(self.leadership, AdvisoryLockLeadership):
            return self.leadership.fenced()
        return self.state

    def _elected(self) -> None:
        """This replica leads: open the alert state, history and delivery from the shared
        store, where the last leader left them, and start evaluating and delivering."""
        with self._leader_lock:
            self._set_api(CHANGING)
            state = self._leader_state()
            if self.rules is not None:
                history = History(state)
                history.keep(self.rules.long_range_selectors(self._memory_window))
                self._series.history = self.history = history
                self.rules.resume(AlertStateDB(state))
            if self.settings.route is not None:
                from piggywatch.delivery import AlertDelivery, firing_events

                delivery = AlertDelivery(self.settings, state,
                                         may_send=self.leadership.confirm,
                                         completion_state=self.state,
                                         in_flight_grace=self._in_flight_grace(),
                                         inbox=self.inbox)
                delivery.start(firing_events(self.rules))
                # Only now: a rule reload on another thread reconciles a started dispatcher.
                self.delivery = delivery
            self._set_api()

    def _in_flight_grace(self) -> float:
        """How long a notification another replica claimed is presumed in flight (0 with a
        single replica: a claim left by a crashed process is retried at once)."""
        if not isinstance(self.leadership, AdvisoryLockLeadership):
            return 0.0
        # Imported here: a single replica never needs the channels (about 1 MB of RSS).
        from piggywatch.alerting.channels import longest_timeout

        # A channel's timeout bounds each phase of a request (connect, send, read), not
        # the whole; three of them, and a margin for clocks and the claim's commit.
        return 3 * longest_timeout(self.settings.receivers) + 5.0

    def _deposed(self) -> None:
        """This replica stops leading (or stops): no more evaluation nor delivery here."""
        with self._leader_lock:
            self._set_api(CHANGING)
            if self.rules is not None:
                self.rules.suspend()
            delivery, self.delivery = self.delivery, None
            if delivery is not None:
                from piggywatch.delivery import clear_delivery_metrics

                # Stopping for good, what cannot go out in the grace time stays in the
                # outbox for the next start (or the next leader); a replica that lost the
                # lock sends nothing more (the outbox asks the leadership first).
                delivery.stop(STOP_GRACE_SECONDS - 1.0 if self._stop.is_set() else 0.0)
                clear_delivery_metrics(self.store)
            history, self.history = self.history, None
            self._series.history = None
            if history is not None:
                if self._stop.is_set():
                    # Keep what memory holds, so long-range rules see it after a restart.
                    self._record_history_into(history)
                history.close()
            self._set_api()

    def _set_api(self, unavailable: str = "") -> None:
        """Point the alerting API at what runs now (or answer 503 while it changes)."""
        if self._endpoints is None:
            return
        from piggywatch.api import DaemonApi

        delivery = self.delivery
        self._endpoints.alerting = DaemonApi(
            self.rules, delivery.incidents if delivery else None,
            unavailable=unavailable if self.settings.route is not None else "")
        # The acknowledgement hooks act on the leader's delivery; 503 elsewhere (retried).
        hooks = delivery.hooks if delivery is not None and not unavailable else None
        self._endpoints.hook_service = hooks.service if hooks is not None else None

    def reload_rules(self) -> bool:
        """(Re)load rule files; on a problem the running rules stay. Returns success."""
        if self.rules is None:
            return True
        paths = self.rule_paths()
        self._rule_files = _mtimes(paths)
        problems = self.rules.load(paths)
        # Memory holds what the rules read at full resolution (an hour at most); selectors of
        # rules that look further back (offset 7d, [6h]) are also kept, downsampled, in the
        # durable history. A window that grows on reload fills from then on, as at a start.
        groups = self.rules.groups()
        window_before, kept_before = self._memory_window, self._kept
        self._memory_window = memory_window(groups)
        recorded = self.rules.long_range_selectors(self._memory_window)
        # A name whose past a reloaded rule starts reading keeps its history from now on,
        # and the rules that read it wait until their range is in memory.
        self._kept = history_names(groups, recorded)
        self.store.set_retention(self._memory_window, full=self._kept,
                                 recent=INSTANT_READS_WINDOW)
        now = time.time()
        for group, key, lookback in rules_without_their_past(groups, kept_before,
                                                             window_before):
            log.warning("rule %r of group %r reads %.0f s of history that memory did not "
                        "keep before this reload: it is evaluated from %s on", key, group,
                        lookback, _utc(now + lookback).isoformat())
            self.rules.hold(group, key, now + lookback)
        history = self.history
        if history is not None:
            history.keep(recorded)
        if self._scheduler is not None:
            self._schedule_rule_groups()
            delivery = self.delivery
            if not problems and delivery is not None:
                # Incidents of rules that were removed or renamed would otherwise stay open
                # for ever, repeating and escalating: they resolve now.
                from piggywatch.delivery import firing_events

                firing = firing_events(self.rules)
                delivery.dispatcher.reconcile(firing or [], time.time())
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
        history = self.history
        if history is not None:
            self._record_history_into(history)

    def _record_history_into(self, history: History) -> None:
        now = time.time()
        try:
            history.record(self.store, now)
            if now - self._history_expired_at >= HISTORY_EXPIRE_SECONDS:
                history.expire(now)
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

        from piggywatch.api import DaemonApi, LeaderForward

        # A state file that cannot be used stops the start with one clear error (StateUnusable,
        # printed by the CLI) before anything listens or runs.
        self.state.check_usable()
        if self.rules is not None and not self.reload_rules():
            # As in Prometheus, rule files that do not load stop the start (the CLI prints
            # why): running without them would look healthy while their alerts cannot fire.
            raise RuleFileError(self.rules.last_problems)
        host, port = split_listen(self.listen)
        server = self.settings.server
        access = Access.from_config(server)
        if not access.api_token:
            log.warning("server.api_token is empty: every /api/v1 call is refused (401)")
        endpoints = Endpoints(build_registry(self.store), ready=self.readiness,
                              statements=self.statements_report,
                              alerting=DaemonApi(self.rules, None), access=access)
        if isinstance(self.leadership, AdvisoryLockLeadership):
            forward = LeaderForward(self.leadership, self.leadership.instance,
                                    ca_file=self.settings.ha.ca_file or None)
            endpoints.forward, endpoints.forward_hook = forward, forward.hook
        self._endpoints = endpoints
        tls = (server.tls.cert_file, server.tls.key_file) if server.tls else None
        try:
            self.http = HttpServer(endpoints, host, port, tls=tls,
                                   max_connections=server.max_connections,
                                   request_timeout=server.request_timeout)
        except OSError as exc:  # the address is taken, not ours, or the TLS pair is wrong
            raise ListenError(f"cannot listen on {host or '*'}:{port}: "
                              f"{exc.strerror or exc} (another process on that port? "
                              "choose another with --listen or server.listen)") from exc
        self.http.start()
        workers = max(4, min(32, len(self.jobs) + 2))
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=workers)},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone="UTC",
        )
        start = time.time()
        for job, phase in _phases(self.jobs):
            self._scheduler.add_job(
                job.run, "interval", seconds=job.interval, id=job.store_key, name=job.store_key,
                next_run_time=_utc(start + phase),
                # A cycle that could not start on time is skipped, not run late in a burst.
                misfire_grace_time=max(1, int(job.interval / 2)),
            )
        if self.rules is not None:
            self._schedule_rule_groups()
            self._scheduler.add_job(self._check_rule_files, "interval",
                                    seconds=RULE_FILE_POLL_SECONDS, id="rule-files",
                                    name="rule-files", misfire_grace_time=1)
            self._scheduler.add_job(self._record_history, "interval",
                                    seconds=HISTORY_RECORD_SECONDS, id="history",
                                    name="history", misfire_grace_time=60)
        self._scheduler.add_job(self._publish_leader_metrics, "interval",
                                seconds=DELIVERY_METRICS_SECONDS, id="delivery-metrics",
                                name="delivery-metrics", next_run_time=_utc(start),
                                misfire_grace_time=5)
        self._scheduler.add_job(self._publish_state_health, "interval",
                                seconds=STATE_CHECK_SECONDS, id="state-health",
                                name="state-health", misfire_grace_time=5)
        self._scheduler.add_job(release_free_memory, "interval", seconds=RELEASE_MEMORY_SECONDS,
                                id="release-memory", name="release-memory",
                                misfire_grace_time=30)
        self._publish_state_health()
        self.leadership.start(self._elected, self._deposed)
        self._publish_leader_metrics()
        self._scheduler.start()
        log.info("piggywatch %s listening on %s://%s/metrics with %d collectors on %d "
                 "targets", __version__, "https" if tls else "http",
                 f"{split_listen(self.listen)[0]}:{self.http.port}", len(self.jobs),
                 len(self.targets))

    def _publish_state_health(self) -> None:
        """``piggywatch_state_database_up`` for a SQLite state file (the leadership publishes
        it for PostgreSQL), with a log line whenever the file's health changes."""
        if isinstance(self.state, PostgresState):
            return
        problem = self.state.problem()
        if problem != self._state_problem:
            if problem:
                log.error("%s", problem)
            else:
                log.info("state file %s is usable again", self.state.describe())
            self._state_problem = problem
        now = time.time()
        self.store.publish(STATE_STORE_KEY, [Sample("piggywatch_state_database_up", labels_of(),
                                                 0.0 if problem else 1.0, now)], now)

    def _publish_leadership(self) -> None:
        now = time.time()
        self.store.publish(leadership_metrics.STORE_KEY, self.leadership.samples(now), now)

    def _publish_leader_metrics(self) -> None:
        self._publish_leadership()
        with self._leader_lock:  # never republishes a stopped delivery's figures
            delivery = self.delivery
            if delivery is not None:
                delivery.publish(self.store)

    def stop(self) -> None:
        """Stop scheduling, cancel running queries, close connections and the server."""
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        for target in self.targets:
            target.cancel()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        # Delivers for the grace time, records the history, then lets go of the lock so a
        # standby takes over at once.
        self.leadership.stop()
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
        if self._endpoints is not None:
            self._endpoints.close()
        self.state.close()

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


def memory_window(groups: Iterable[RuleGroup]) -> float:
    """Seconds of full-resolution history to keep in memory for these rule groups: the
    longest lookback of a rule that memory serves alone (rules reaching beyond
    ``MEMORY_WINDOW`` read the durable history for their older part), with some slack."""
    reach = max((lookback for group in groups for rule in group.rules
                 if (lookback := lookback_window(rule.expr)) <= MEMORY_WINDOW), default=0.0)
    return min(MEMORY_WINDOW, max(MIN_MEMORY_WINDOW, reach + MEMORY_WINDOW_SLACK))


def rules_without_their_past(groups: Iterable[RuleGroup], kept_before: frozenset[str] | None,
                             window_before: float) -> Iterator[tuple[str, str, float]]:
    """(group, rule key, lookback) of each rule that reads a past memory did not keep before
    a reload: of a metric whose past was not kept (``kept_before``), or further back than
    the memory window was (``window_before``). Rules that reach beyond memory read the
    durable history, and are left as they are."""
    for group in groups:
        for rule, key in zip(group.rules, rule_keys(group), strict=True):
            lookback = lookback_window(rule.expr)
            if lookback > MEMORY_WINDOW:
                continue
            read = _read_over_time(rule)
            if lookback > window_before or (kept_before is not None and (
                    read is None or not read <= kept_before)):
                yield group.name, key, lookback


def history_names(groups: Iterable[RuleGroup],
                  recorded: Iterable[Sequence[LabelMatcher]]) -> frozenset[str] | None:
    """The metric names whose whole memory window is kept: those whose past the rules read
    (see ``names_read_over_time``), in their expressions or their templates' queries, and
    those of the selectors the durable history records (``recorded``), which it copies from
    memory. None, every name, when one of those reads may be of any name."""
    names: set[str] = set()
    for group in groups:
        for rule in group.rules:
            read = _read_over_time(rule)
            if read is None:
                return None
            names |= read
    for matchers in recorded:
        name = next((m.value for m in matchers
                     if m.name == "__name__" and m.op is MatchOp.EQUAL), None)
        if name is None:
            return None
        names.add(name)
    return frozenset(names)


def _read_over_time(rule: Rule) -> frozenset[str] | None:
    """The names whose past one rule reads, or None when it may read any name's."""
    queries: Sequence[str] | None = ()
    if isinstance(rule, AlertingRule):
        texts = [template_queries(t) for t in (*rule.labels.values(), *rule.annotations.values())]
        queries = None if None in texts else [q for found in texts if found for q in found]
    if queries is None:
        return None
    names: set[str] = set()
    for expr in (rule.expr, *queries):
        try:
            read = names_read_over_time(expr)
        except PromQLError:
            return None  # a query that does not parse here: whatever it reads once rendered
        if read is None:
            return None
        names |= read
    return frozenset(names)


def _no_delivery(event: AlertEvent) -> None:
    """The rules' sink when no route is configured: alerts are only exported."""


# How far apart the cycles of one target's collectors start, at most.
PHASE_STEP = 0.5


def _phases(jobs: list[CollectorJob]) -> list[tuple[CollectorJob, float]]:
    """Each job with the delay of its first cycle (and so of every later one).

    The collectors of one target share its one connection, a cycle at a time: started
    together, each would wait for the others (its duration counting the wait) and the
    database would get their queries in bursts. So the k-th of a target's n jobs starts
    k times min(interval / n, PHASE_STEP) seconds after the first, and intervals that are
    multiples of each other keep them apart.
    """
    by_owner: dict[str, list[CollectorJob]] = {}
    for job in jobs:
        by_owner.setdefault(job.owner, []).append(job)
    return [(job, k * min(job.interval / len(mine), PHASE_STEP))
            for mine in by_owner.values() for k, job in enumerate(mine)]


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
