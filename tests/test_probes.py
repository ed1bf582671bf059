"""ProbeCollector against a real local HTTP server: timeouts, status codes, body checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from piggywatch.collectors.probes import ProbeCollector, ProbeConfig, json_lookup, percentile
from piggywatch.store import Sample
from tests.support.servers import LocalHTTPServer, Reply


class AppServer(LocalHTTPServer):
    """The app's endpoints: healthy unless a test scripts otherwise."""

    def handle(self, request: Any) -> Reply:
        if request.path == "/auth/v1/health":
            return Reply(200, {"name": "GoTrue", "status": {"db": "ok"}, "regions": ["eu"]})
        return Reply(200, "<html>PiggyBong is up</html>")


@pytest.fixture
def app() -> Iterator[AppServer]:
    with AppServer() as server:
        yield server


def probe(app: AppServer, path: str = "/", **fields: Any) -> ProbeCollector:
    return ProbeCollector(ProbeConfig.model_validate(
        {"name": "home", "url": app.base_url + path, **fields}))


def by_name(samples: list[Sample]) -> dict[str, float]:
    return {s.name: s.value for s in samples}


def test_a_healthy_endpoint_passes(app: AppServer) -> None:
    samples = probe(app, body_contains="is up").collect(10.0)
    values = by_name(samples)
    assert values["probe_success"] == 1.0
    assert values["probe_http_status_code"] == 200.0
    assert 0.0 < values["probe_duration_seconds"] < 1.0
    assert {s.labels for s in samples} == {(("critical", "false"), ("probe", "home"))}
    assert {s.timestamp for s in samples} == {10.0}


def test_a_server_slower_than_the_timeout_fails_with_the_time_waited(app: AppServer) -> None:
    app.script(Reply(200, "late", delay=2.0))
    values = by_name(probe(app, timeout="500ms").collect(1.0))
    assert values["probe_success"] == 0.0
    assert values["probe_http_status_code"] == 0.0
    assert values["probe_duration_seconds"] == pytest.approx(0.5, abs=0.25)


def test_a_500_reports_its_status_code(app: AppServer) -> None:
    app.script(Reply(500, "boom"))
    collector = probe(app)
    values = by_name(collector.collect(1.0))
    assert (values["probe_success"], values["probe_http_status_code"]) == (0.0, 500.0)
    assert collector.last_failure == "status 500, expected one of [200]"


def test_an_expected_non_200_status_passes(app: AppServer) -> None:
    app.script(Reply(401, {"error": "no token"}))
    values = by_name(probe(app, expected_status=[401, 403]).collect(1.0))
    assert (values["probe_success"], values["probe_http_status_code"]) == (1.0, 401.0)


def test_a_missing_body_substring_fails(app: AppServer) -> None:
    collector = probe(app, body_contains="Welcome back")
    assert by_name(collector.collect(1.0))["probe_success"] == 0.0
    assert collector.last_failure == "the body does not contain 'Welcome back'"


def test_json_path_checks_compare_the_value(app: AppServer) -> None:
    good = probe(app, "/auth/v1/health", json_path={"path": "status.db", "equals": "ok"})
    assert by_name(good.collect(1.0))["probe_success"] == 1.0
    listed = probe(app, "/auth/v1/health", json_path={"path": "$.regions.0", "equals": "eu"})
    assert by_name(listed.collect(1.0))["probe_success"] == 1.0

    app.script(Reply(200, {"name": "GoTrue", "status": {"db": "down"}}))
    assert by_name(good.collect(2.0))["probe_success"] == 0.0
    assert good.last_failure == "status.db is 'down', expected 'ok'"
    app.script(Reply(200, "not json"))
    assert by_name(good.collect(3.0))["probe_success"] == 0.0
    assert good.last_failure == "the body is not JSON"


def test_method_headers_and_body_are_sent(app: AppServer) -> None:
    collector = probe(app, "/auth/v1/token", name="sign-in", method="POST", critical=True,
                      headers={"apikey": "anon-key", "Content-Type": "application/json"},
                      body='{"email": "smoke@example.com"}')
    samples = collector.collect(1.0)
    assert {s.labels for s in samples} == {(("critical", "true"), ("probe", "sign-in"))}
    sent = app.requests[-1]
    assert (sent.method, sent.path, sent.header("apikey")) == ("POST", "/auth/v1/token",
                                                               "anon-key")
    assert sent.json() == {"email": "smoke@example.com"}
    assert collector.config.secrets() == ["anon-key"]     # not the content type
    assert "anon-key" not in repr(collector.config)


def test_a_refused_connection_fails_without_raising() -> None:
    with AppServer() as gone:
        url = gone.base_url
    values = by_name(ProbeCollector(ProbeConfig(name="gone", url=url)).collect(1.0))
    assert (values["probe_success"], values["probe_http_status_code"]) == (0.0, 0.0)


def test_percentiles_cover_the_last_window_of_results(app: AppServer) -> None:
    collector = probe(app, window=3, timeout="300ms")
    app.script(Reply(200, "x", delay=1.0))          # a timeout: counted at ~0.3 s
    first = by_name(collector.collect(1.0))
    assert first["probe_duration_p50_seconds"] == first["probe_duration_seconds"]
    for t in range(3):                              # three fast results push it out
        values = by_name(collector.collect(2.0 + t))
    assert values["probe_duration_p95_seconds"] < 0.25


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == pytest.approx(4.8)
    assert percentile([7.0], 0.95) == 7.0


def test_json_lookup_follows_dicts_and_lists() -> None:
    document = {"a": {"b": [{"c": 1}, {"c": None}]}}
    assert json_lookup(document, "a.b.1.c") == (True, None)
    assert json_lookup(document, "a.b.-1.c") == (True, None)
    assert json_lookup(document, "a.b.2.c") == (False, None)
    assert json_lookup(document, "a.x") == (False, None)
