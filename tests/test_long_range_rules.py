"""Rules that look a week back keep working across a restart (durable, downsampled history)."""

from __future__ import annotations

from pathlib import Path

from piggywatch.rules.alerts import AlertEvent
from piggywatch.rules.manager import NoData, RuleManager
from piggywatch.store import MemoryStore, MetricKind, MetricSpec, Sample, labels_of
from piggywatch.store.history import CombinedSource, History

RULES = """\
groups:
  - name: growth
    rules:
      - alert: SignupsGrowthHigh
        expr: app_signups_total - app_signups_total offset 7d > 100
        labels: {severity: low}
      - alert: Recent
        expr: rate(app_signups_total[5m]) > 100
"""
WEEK = 7 * 86400.0
WINDOW = 3600.0 + 60


def build(tmp_path: Path, events: list[AlertEvent],
          clock: list[float]) -> tuple[MemoryStore, History, RuleManager]:
    store = MemoryStore(retention=WINDOW)
    store.register([MetricSpec("app_signups_total", MetricKind.COUNTER, "Sign-ups")])
    history = History(tmp_path / "state.db")
    manager = RuleManager(store, CombinedSource(store, history, lambda: WINDOW), events.append,
                          no_data=NoData.OK, clock=lambda: clock[0])
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    assert manager.load([rules]) == []
    history.keep(manager.long_range_selectors(WINDOW))
    return store, history, manager


def test_offset_7d_sees_last_week_after_a_restart(tmp_path: Path) -> None:
    events: list[AlertEvent] = []
    start = 1_700_000_000.0
    clock = [start]
    store, history, manager = build(tmp_path, events, clock)
    assert manager.long_range_selectors(WINDOW), "the offset 7d rule needs the history"
    labels = labels_of(target="main")
    # A week and a bit of sign-ups, 15 s apart, 1 per minute; history recorded every minute
    # as the daemon does. Memory only ever holds the last hour.
    t = start
    total = 0.0
    while t <= start + WEEK + 1800:
        clock[0] = t
        store.publish("app", [Sample("app_signups_total", labels, total, t)], t)
        if int(t - start) % 60 == 0:
            history.record(store, t)
        t += 15
        total += 0.25
    now = t - 15
    history.record(store, now)
    history.close()

    # "Restart": empty memory, the same state file.
    events.clear()
    clock[0] = now + 15
    store, history, manager = build(tmp_path, events, clock)
    store.publish("app", [Sample("app_signups_total", labels, total + 500, now + 15)], now + 15)
    fired = manager.evaluate_group("growth", now + 15)
    # A week ago the counter was ~10,080 lower; now it jumped by 500 more: the difference
    # is far above 100 only because last week's value came from the history.
    assert [e.alert.label("alertname") for e in fired] == ["SignupsGrowthHigh"]
    week_ago = [s for s in manager.query("app_signups_total offset 7d", now + 15)]
    assert len(week_ago) == 1
    assert abs(week_ago[0].value - (total + 500 - 0.25 * WEEK / 15) + 500) < 0.25 * 300 / 15 + 1
    history.close()
