"""Every error the /api/v1 API answers, through the real HttpServer on a loopback port: the
status, a JSON body {"status": "error", "error": ...} whose message says what to do, and the
replica in the state that causes it (no route, a failing state database, leadership
changing, a standby whose leader is gone). Complements tests/test_api.py (401s, a missing
"by", an unknown alert) and tests/test_server_limits.py (malformed bodies and paths)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from piggywatch.alerting.dispatcher import Dispatcher
from piggywatch.alerting.outbox import Outbox
from piggywatch.alerting.settings import AlertingSettings
from piggywatch.api import FORWARDED_HEADER, NO_DELIVERY, DaemonApi, LeaderForward
from piggywatch.exporter import build_registry
from piggywatch.leadership import Leadership
from piggywatch.server import MAX_BODY_BYTES, Access, Endpoints, HttpServer
from piggywatch.state import SQLiteState
from piggywatch.store import MemoryStore
from tests.support.ports import free_port
from tests.support.state import away

TOKEN = "api-errors-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DELIVERY = """
receivers: [{name: oncall, webhook: {url: "http://127.0.0.1:9/hook"}}]
route: {receiver: oncall, group_by: [alertname], group_wait: 0s}
"""
SILENCE = {"matchers": ['alertname="QueueDeep"'], "duration": "1h", "comment": "migration",
           "created_by": "alice"}


class StandbyOf(Leadership):
    """A standby whose leader is at ``url`` (None: no leader known)."""

    def __init__(self, url: str | None) -> None:
        super().__init__()
        self._url = url

    def leader_url(self) -> str | None:
        return self._url


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    body: bytes | Any = None  # bytes are sent as they are, anything else as JSON
    status: int = 400
    says: str = ""  # a part of the error message
    replica: str = "leader"  # see replica() below
    headers: dict[str, str] = field(default_factory=dict)


def with_silence(**changes: Any) -> dict[str, Any]:
    return {key: value for key, value in {**SILENCE, **changes}.items() if value is not None}


CASES = {
    # The request itself.
    "body over the cap": Case("POST", "/api/v1/silences",
                              json.dumps(with_silence(comment="x" * MAX_BODY_BYTES)).encode(),
                              says=f"at most {MAX_BODY_BYTES} bytes"),
    "invalid JSON": Case("POST", "/api/v1/silences", b'{"matchers": [', says="not valid JSON"),
    "a JSON array body": Case("POST", "/api/v1/silences", b'["alertname=x"]',
                              says="must be a JSON object"),
    "a JSON string ack body": Case("POST", "/api/v1/alerts/abc/ack", b'"alice"',
                                   says="must be a JSON object"),
    "GET on the ack endpoint": Case("GET", "/api/v1/alerts/abc/ack", status=405,
                                    says="use POST"),
    "POST on the alerts list": Case("POST", "/api/v1/alerts", {}, status=405, says="use GET"),
    "PUT on the silences list": Case("PUT", "/api/v1/silences", SILENCE, status=405,
                                     says="use GET"),
    "GET on one silence": Case("GET", "/api/v1/silences/abc", status=405, says="use DELETE"),
    "POST on statements": Case("POST", "/api/v1/statements", {}, status=405, says="use GET"),
    "unknown /api/ path": Case("GET", "/api/v1/nothing", status=404,
                               says="no such endpoint: /api/v1/nothing"),
    "unknown API version": Case("GET", "/api/v2/alerts", status=404,
                                says="no such endpoint: /api/v2/alerts"),
    "an ack id too long": Case("POST", "/api/v1/alerts/" + "a" * 65 + "/ack", {"by": "alice"},
                               status=404, says="no such endpoint"),
    # Acknowledgements.
    "over-long ack comment": Case("POST", "/api/v1/alerts/abc/ack",
                                  {"by": "alice", "comment": "x" * 2001},
                                  says="at most 2000 characters"),
    "ack comment not text": Case("POST", "/api/v1/alerts/abc/ack", {"by": "alice", "comment": 7},
                                 says='"comment" must be text'),
    "over-long ack by": Case("POST", "/api/v1/alerts/abc/ack", {"by": "a" * 201},
                             says="1 to 200 characters"),
    "blank ack by": Case("POST", "/api/v1/alerts/abc/ack", {"by": "   "},
                         says='give "by"'),
    "unknown ack source": Case("POST", "/api/v1/alerts/abc/ack",
                               {"by": "alice", "source": "email"}, says='"source" is "api"'),
    # Silences.
    "silence without matchers": Case("POST", "/api/v1/silences", with_silence(matchers=None),
                                     says='give "matchers"'),
    "silence matchers not strings": Case("POST", "/api/v1/silences",
                                         with_silence(matchers=[1]), says='give "matchers"'),
    "silence with no matcher": Case("POST", "/api/v1/silences", with_silence(matchers=[]),
                                    says="at least one matcher"),
    "silence with a bad matcher": Case("POST", "/api/v1/silences",
                                       with_silence(matchers=["nonsense"]),
                                       says="is not a matcher"),
    "silence without comment": Case("POST", "/api/v1/silences", with_silence(comment="  "),
                                    says='give "comment"'),
    "silence without creator": Case("POST", "/api/v1/silences", with_silence(created_by=None),
                                    says='give "created_by"'),
    "silence with a bad duration": Case("POST", "/api/v1/silences",
                                        with_silence(duration="soon"),
                                        says="'soon' is not a duration"),
    "silence over a year": Case("POST", "/api/v1/silences", with_silence(duration="400d"),
                                says="at most 365 days"),
    "silence ending in the past": Case("POST", "/api/v1/silences",
                                       with_silence(duration=None, ends_at=1000.0),
                                       says="must end"),
    "silence ending in 20 years": Case("POST", "/api/v1/silences",
                                       with_silence(duration=None,
                                                    ends_at=time.time() + 20 * 365 * 86400),
                                       says="within 10 years"),
    "DELETE of an unknown silence": Case("DELETE", "/api/v1/silences/nosuch", status=404,
                                         says="no silence with id nosuch"),
    # No route configured: alerts are listed, nothing can be acknowledged or silenced.
    "ack without a route": Case("POST", "/api/v1/alerts/abc/ack", {"by": "alice"}, status=409,
                                says=NO_DELIVERY, replica="no route"),
    "silences without a route": Case("GET", "/api/v1/silences", status=409, says=NO_DELIVERY,
                                     replica="no route"),
    "new silence without a route": Case("POST", "/api/v1/silences", SILENCE, status=409,
                                        says=NO_DELIVERY, replica="no route"),
    "expiry without a route": Case("DELETE", "/api/v1/silences/abc", status=409,
                                   says=NO_DELIVERY, replica="no route"),
    # The state database fails under the call.
    "new silence, state database failing": Case(
        "POST", "/api/v1/silences", SILENCE, status=503,
        says="the state database is unavailable", replica="state failing"),
    "silence expiry, state database failing": Case(
        "DELETE", "/api/v1/silences/{silence}", status=503,
        says="the state database is unavailable", replica="state failing"),
    # Leadership.
    "leadership changing": Case("GET", "/api/v1/alerts", status=503,
                                says="leadership is changing", replica="changing"),
    "a forwarded call forwarded again": Case(
        "GET", "/api/v1/alerts", status=503, says="leadership is changing", replica="standby",
        headers={FORWARDED_HEADER: "replica-b"}),
    "standby whose leader is gone": Case("GET", "/api/v1/silences", status=502,
                                         says="did not answer: ConnectError",
                                         replica="standby, leader gone"),
    "standby with no leader known": Case("POST", "/api/v1/silences", SILENCE, status=503,
                                         says="no leader is known yet",
                                         replica="standby, no leader"),
    "the leader's error through a standby": Case("DELETE", "/api/v1/silences/nosuch",
                                                 status=404, says="no silence with id nosuch",
                                                 replica="standby"),
    "the leader's 405 through a standby": Case("GET", "/api/v1/alerts/abc/ack", status=405,
                                               says="use POST", replica="standby"),
}


@contextmanager
def serving(endpoints: Endpoints) -> Iterator[str]:
    server = HttpServer(endpoints, "127.0.0.1", 0)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def endpoints(directory: Path, stack: ExitStack, *, route: bool = True,
              unavailable: str = "") -> Endpoints:
    """The daemon's endpoints, with a dispatcher on a SQLite state file in ``directory``
    (none when ``route`` is false: the configuration has no route)."""
    directory.mkdir(exist_ok=True)
    dispatcher = None
    if route:
        outbox = Outbox(directory / "state.db", {})
        stack.callback(outbox.close)
        dispatcher = Dispatcher(AlertingSettings.model_validate(yaml.safe_load(DELIVERY)),
                                outbox, directory / "state.db")
        stack.callback(dispatcher.close)
    return Endpoints(build_registry(MemoryStore(), process_metrics=False),
                     ready=lambda: (True, "ready"), statements=dict,
                     alerting=DaemonApi(None, dispatcher.incidents if dispatcher else None,
                                        unavailable=unavailable),
                     access=Access(api_token=TOKEN))


def replica(kind: str, tmp_path: Path, stack: ExitStack) -> tuple[str, str]:
    """The URL of a replica in the state ``kind`` names, and the id of a silence it holds
    ("" if none)."""
    if kind in ("leader", "no route", "state failing"):
        url = stack.enter_context(serving(endpoints(tmp_path / "leader", stack,
                                                    route=kind != "no route")))
        if kind != "state failing":
            return url, ""
        created = httpx.post(url + "/api/v1/silences", json=SILENCE, headers=AUTH)
        assert created.status_code == 200, created.text
        state = SQLiteState(tmp_path / "leader" / "state.db")
        stack.callback(state.close)
        stack.enter_context(away(state, "silence_entries"))
        return url, str(created.json()["data"]["silence"]["id"])
    if kind == "changing":
        return stack.enter_context(serving(endpoints(
            tmp_path / "leader", stack, unavailable="leadership is changing; retry in a few "
                                                   "seconds"))), ""
    leader_url: str | None = None  # "standby, no leader"
    if kind == "standby":
        leader_url = replica("leader", tmp_path, stack)[0]
    elif kind == "standby, leader gone":
        leader_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    standby = endpoints(tmp_path / "standby", stack)
    standby.forward = LeaderForward(StandbyOf(leader_url), "replica-b")
    return stack.enter_context(serving(standby)), ""


@pytest.mark.parametrize("name", list(CASES))
def test_each_api_error_is_a_json_answer_that_says_what_to_do(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str) -> None:
    case = CASES[name]
    with ExitStack() as stack:
        url, silence = replica(case.replica, tmp_path, stack)
        content = case.body if isinstance(case.body, bytes) or case.body is None \
            else json.dumps(case.body).encode()
        response = httpx.request(case.method, url + case.path.format(silence=silence),
                                 content=content, timeout=15,
                                 headers={**AUTH, "Content-Type": "application/json",
                                          **case.headers})
    assert response.status_code == case.status, response.text
    assert response.headers["Content-Type"] == "application/json"
    answer = response.json()
    assert answer["status"] == "error"
    assert case.says in answer["error"], answer["error"]
    assert "Traceback" not in answer["error"] and TOKEN not in response.text
    if case.replica == "state failing":
        assert "the state database failed" in caplog.text
