"""The Grafana dashboard and the shipped rules, proven against a real Prometheus.

A real Prometheus (Debian's 2.42 package) scrapes `piggywatch demo` every second and
loads `rules/*.yaml`; every query of `deploy/grafana/piggywatch.json` must then return
data through Prometheus's HTTP API, and every rule group must load and evaluate cleanly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests.support.ports import free_port
from tests.support.processes import stop_process
from tests.support.prometheus import running_prometheus

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="the prometheus server is not installed")

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "piggywatch.json"
RULES = REPO / "rules"

# What Grafana would put in place of the dashboard's variables, with "All" selected.
GRAFANA_VARIABLES = {"target": ".*", "instance": ".*", "__rate_interval": "1m",
                     "__range": "1m", "__interval": "1m", "__range_s": "60",
                     "__interval_ms": "60000"}

T = TypeVar("T")


def wait_for(produce: Callable[[], T | None], timeout: float, what: str,
             proc: subprocess.Popen[str] | None = None, log: Path | None = None) -> T:
    """Poll ``produce`` until it returns something truthy; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited\n"
                        f"{log.read_text()[-3000:] if log else ''}")
        try:
            result = produce()
        except httpx.TransportError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s\n"
                        f"{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.5)


def dashboard_panels() -> Iterator[dict[str, Any]]:
    """Every panel of the dashboard, those inside collapsed rows too."""
    def walk(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from walk(item.get("panels", []))

    yield from walk(json.loads(DASHBOARD.read_text())["panels"])


def dashboard_queries() -> list[tuple[str, str]]:
    """Every (panel title, PromQL) of the dashboard, variables substituted as Grafana would."""
    def substitute(expr: str) -> str:
        def value(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            assert name in GRAFANA_VARIABLES, f"unknown dashboard variable ${name} in {expr}"
            return GRAFANA_VARIABLES[name]
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)

    return [(panel["title"], substitute(target["expr"]))
            for panel in dashboard_panels()
            for target in panel.get("targets", [])]


def shipped_rule_groups() -> dict[str, int]:
    """Each shipped rule group's name and how many rules it holds."""
    groups: dict[str, int] = {}
    for path in sorted(RULES.glob("*.yaml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            groups[group["name"]] = len(group["rules"])
    return groups


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``piggywatch demo`` on a free loopback port; its listen address."""
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    listen = f"127.0.0.1:{free_port()}"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "piggywatch", "demo", "--listen", listen],
                                stdout=out, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(lambda: httpx.get(f"http://{listen}/healthz", timeout=2).is_success,
                 60, "the demo did not serve /healthz", proc, log)
        yield listen
    finally:
        stop_process(proc, 20)


@pytest.fixture(scope="module")
def prometheus(demo: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the demo every second with the shipped rules; its URL."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "rule_files": [str(RULES / "*.yaml")],
        "scrape_configs": [{"job_name": "piggywatch",
                            "static_configs": [{"targets": [demo]}]}],
    }
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), config) as (url, proc, log):
        wait_for(lambda: httpx.get(f"{url}/-/ready", timeout=2).is_success,
                 30, "Prometheus did not become ready", proc, log)
        yield url


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """The instant vector ``expr`` evaluates to now; a query error fails the test."""
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    assert body["data"]["resultType"] == "vector", expr
    return body["data"]["result"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def scraped(prometheus: str) -> str:
    """Prometheus once it has scraped the demo at least twice, sources and statements in."""
    wait_for(lambda: query(prometheus, 'count_over_time(up{job="piggywatch"}[1m]) >= 2'
                                       ' and up{job="piggywatch"} == 1'),
             30, "Prometheus did not scrape the demo twice")
    # The app sources report within ~15 s; the statements' rates need two samples each.
    wait_for(lambda: query(prometheus, "cost_month_to_date_dollars")
             and query(prometheus, "app_users_active_day")
             and query(prometheus, "edge_function_invocations_total")
             and query(prometheus, "count_over_time(pg_stat_statements_calls_total[1m]) >= 2"),
             45, "the demo's sources and statements did not reach Prometheus")
    return prometheus


def test_every_dashboard_query_returns_data_from_prometheus(scraped: str) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 30, "the dashboard's panels were not all found"
    deadline = time.monotonic() + 30
    empty = []
    for title, expr in queries:
        # Rates need two samples of a series; one that just appeared gets a few seconds.
        while not (result := query(scraped, expr)) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not result:
            empty.append(f"{title}: {expr}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


# Alerts about PiggyWatch-wide things (probes, memory) carry no target: the panel of
# active alerts follows the instance only, so choosing a target does not hide them.
UNFILTERED_BY_TARGET = {"ALERTS"}


def test_every_dashboard_query_of_a_metric_with_targets_follows_the_target_variable(
        scraped: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == [
        "datasource", "instance", "target"]
    unfiltered = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            for name, matchers in re.findall(r"([A-Za-z_:][\w:]*)\{([^}]*)\}", target["expr"]):
                assert 'instance=~"$instance"' in matchers, f"{panel['title']}: {name}"
                has_targets = query(scraped, f'{name}{{target!=""}}')
                if (has_targets and name not in UNFILTERED_BY_TARGET
                        and 'target=~"$target"' not in matchers):
                    unfiltered.append(f"{panel['title']}: {name}")
    assert not unfiltered, "queries that ignore the target variable:\n" + "\n".join(unfiltered)


def test_the_instance_and_target_variables_offer_the_demo_daemon_and_database(scraped: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    offered = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        assert found, f"{variable['name']}: not a label_values(selector, label) query"
        selector = re.sub(r"\$(\w+)", lambda m: GRAFANA_VARIABLES[m.group(1)], found[1])
        # What Grafana's label_values runs: the label's values over the matching series.
        offered[variable["name"]] = httpx.get(
            f"{scraped}/api/v1/label/{found[2]}/values", params={"match[]": selector},
            timeout=5).json()["data"]
    assert offered["target"] == ["piggybong"]
    assert len(offered["instance"]) == 1


def test_every_shipped_rule_group_loads_and_evaluates_in_prometheus(scraped: str) -> None:
    expected = shipped_rule_groups()

    def evaluated() -> list[dict[str, Any]] | None:
        groups = httpx.get(f"{scraped}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        # A rule evaluated at least once has left "unknown".
        if any(rule["health"] == "unknown" for rule in rules):
            return None
        return groups  # type: ignore[no-any-return]

    groups = wait_for(evaluated, 20, "Prometheus did not evaluate every rule")
    assert {g["name"]: len(g["rules"]) for g in groups} == expected
    broken = [f"{g['name']}/{r['name']}: {r['health']} {r.get('lastError', '')}"
              for g in groups for r in g["rules"]
              if r["health"] != "ok" or r.get("lastError")]
    assert not broken, "rules Prometheus could not evaluate:\n" + "\n".join(broken)


def test_prometheus_accepts_the_scrape_and_rules_configuration(scraped: str) -> None:
    config = httpx.get(f"{scraped}/api/v1/status/config", timeout=5).json()
    assert config["status"] == "success"
    loaded = yaml.safe_load(config["data"]["yaml"])
    assert loaded["rule_files"] == [str(RULES / "*.yaml")]
    targets = httpx.get(f"{scraped}/api/v1/targets", timeout=5).json()["data"]
    [target] = targets["activeTargets"]
    assert target["health"] == "up", target.get("lastError")
