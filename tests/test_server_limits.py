"""The HTTP server under many, slow and malformed clients, against the real HttpServer on a
loopback port (plain and TLS) and the real daemon process: slow clients cost no thread and
cannot lock out /metrics, the whole request has one deadline, the connection count is bounded
(503 beyond it), and malformed authenticated requests get a 400 JSON error."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from piggywatch.alerting.dispatcher import Dispatcher
from piggywatch.alerting.outbox import Outbox
from piggywatch.alerting.settings import AlertingSettings
from piggywatch.api import FORWARDS_AT_ONCE, DaemonApi, LeaderForward
from piggywatch.demo.cluster import ThrowawayCluster
from piggywatch.exporter import build_registry
from piggywatch.leadership import Leadership
from piggywatch.server import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT_SECONDS,
    Access,
    Endpoints,
    HttpServer,
)
from piggywatch.store import MemoryStore, MetricKind, MetricSpec, Sample, labels_of
from tests.support.daemon_process import DaemonProcess
from tests.support.servers.tls import (
    SelfSignedCertificate,
    cryptography_available,
    make_certificate,
)

TOKEN = "server-limits-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DELIVERY = """
receivers: [{name: oncall, webhook: {url: "http://127.0.0.1:9/hook"}}]
route: {receiver: oncall, group_by: [alertname], group_wait: 0s}
"""
HALF_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def make_endpoints(tmp_path: Path, stack: ExitStack) -> Endpoints:
    """The daemon's endpoints over a store with one series and a real dispatcher."""
    store = MemoryStore()
    store.register([MetricSpec("queue_depth", MetricKind.GAUGE, "test")])
    now = time.time()
    store.publish("q", [Sample("queue_depth", labels_of(target="main"), 7, now)], now)
    outbox = Outbox(tmp_path / "state.db", {})
    stack.callback(outbox.close)
    dispatcher = Dispatcher(AlertingSettings.model_validate(yaml.safe_load(DELIVERY)), outbox,
                            tmp_path / "state.db")
    stack.callback(dispatcher.close)
    return Endpoints(build_registry(store, process_metrics=False),
                     ready=lambda: (True, "ready"), statements=dict,
                     alerting=DaemonApi(None, dispatcher.incidents), access=Access(api_token=TOKEN))


@contextmanager
def running(app: Any, **options: Any) -> Iterator[HttpServer]:
    server = HttpServer(app, "127.0.0.1", 0, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def certificate(tmp_path: Path) -> SelfSignedCertificate:
    if not cryptography_available():
        pytest.skip("needs the cryptography package")
    return make_certificate(tmp_path / "tls")


def slow_client(port: int, context: ssl.SSLContext | None) -> socket.socket:
    """A client that sends half a request and stalls (after a real handshake with TLS)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
    sock.sendall(HALF_REQUEST)
    return sock


def answer_or_closed(sock: socket.socket, wait: float) -> bytes | None:
    """What the server sent before closing; None if it still holds the connection open."""
    sock.settimeout(wait)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return None
    except (ConnectionResetError, ssl.SSLError):
        pass
    return received


def timed_get(client: httpx.Client, url: str) -> tuple[int, float]:
    began = time.monotonic()
    status = client.get(url).status_code
    return status, time.monotonic() - began


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_metrics_and_healthz_answer_under_150_slow_clients(
        tmp_path: Path, request: pytest.FixtureRequest, scheme: str) -> None:
    tls: tuple[str, str] | None = None
    context: ssl.SSLContext | None = None
    if scheme == "https":
        cert: SelfSignedCertificate = request.getfixturevalue("certificate")
        tls, context = (str(cert.cert_path), str(cert.key_path)), cert.client_context()
    threads_before = threading.active_count()
    with ExitStack() as stack:
        server = stack.enter_context(running(make_endpoints(tmp_path, stack), tls=tls))
        url = f"{scheme}://127.0.0.1:{server.port}"
        slow = [slow_client(server.port, context) for _ in range(150)]
        for sock in slow:
            stack.callback(sock.close)
        threads_added = threading.active_count() - threads_before
        client = httpx.Client(verify=context or True, timeout=10)
        figures = [timed_get(client, url + path) for path in ("/metrics", "/healthz") * 3]
        print(f"{scheme}: 150 slow clients, {threads_added} threads added; /metrics and "
              f"/healthz: " + ", ".join(f"{status} in {took * 1000:.0f} ms"
                                         for status, took in figures))
        assert all(status == 200 for status, _ in figures), figures
        assert max(took for _, took in figures) < 3.0, figures
        # A slow client costs no thread of its own.
        assert threads_added < 40, f"{threads_added} threads for 150 slow clients"
        # Beyond the connection limit, slow clients were answered 503 or closed.
        ends = [answer_or_closed(sock, 0.05) for sock in slow]
        cut = [end for end in ends if end is not None]
        assert len(cut) >= 150 - DEFAULT_MAX_CONNECTIONS, f"{len(cut)} of 150 cut"
        assert all(end == b"" or (end.startswith(b"HTTP/1.") and b" 503 " in end.split(
            b"\r\n")[0]) for end in cut), cut[:3]


def test_a_connection_beyond_the_limit_gets_503_while_every_slot_is_answering(
        tmp_path: Path) -> None:
    release = threading.Event()
    inside = threading.Semaphore(0)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["PATH_INFO"] == "/block":
            inside.release()
            release.wait(30)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]

    with running(app, max_connections=4) as server:
        url = f"http://127.0.0.1:{server.port}"
        blocked = [threading.Thread(target=httpx.get, args=(url + "/block",),
                                    kwargs={"timeout": 30}) for _ in range(4)]
        for thread in blocked:
            thread.start()
        for _ in blocked:
            assert inside.acquire(timeout=10), "a /block request never reached the app"
        refused = httpx.get(url + "/healthz", timeout=5)
        release.set()
        for thread in blocked:
            thread.join(10)
        assert refused.status_code == 503, refused.text
        assert refused.json()["status"] == "error"
        assert "connections" in refused.json()["error"]
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200


def test_a_new_client_displaces_the_slowest_when_the_limit_is_reached(tmp_path: Path) -> None:
    with ExitStack() as stack:
        server = stack.enter_context(running(make_endpoints(tmp_path, stack),
                                             max_connections=4))
        slow = [slow_client(server.port, None) for _ in range(4)]
        for sock in slow:
            stack.callback(sock.close)
        time.sleep(1.2)
        answer = httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
        assert answer.status_code == 200
        assert answer_or_closed(slow[0], 2) is not None, "the oldest slow client is kept"
        assert [answer_or_closed(sock, 0.05) for sock in slow[1:]] == [None] * 3


def test_a_client_dribbling_one_byte_a_second_is_cut_at_the_whole_request_deadline(
        tmp_path: Path) -> None:
    with ExitStack() as stack:
        server = stack.enter_context(running(make_endpoints(tmp_path, stack)))
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
        began = time.monotonic()
        sock.sendall(HALF_REQUEST)
        cut_after: float | None = None
        limit = DEFAULT_REQUEST_TIMEOUT_SECONDS + 5
        while time.monotonic() - began < limit:
            try:
                sock.sendall(b"x")
            except OSError:
                cut_after = time.monotonic() - began
                break
            if answer_or_closed(sock, 1.0) is not None:
                cut_after = time.monotonic() - began
                break
        print(f"dribbler cut after {cut_after} s (deadline {DEFAULT_REQUEST_TIMEOUT_SECONDS} s)")
        assert cut_after is not None, f"a dribbling client still connected after {limit} s"
        assert cut_after >= DEFAULT_REQUEST_TIMEOUT_SECONDS - 1


def test_clients_that_do_not_read_their_responses_hold_no_worker() -> None:
    # More than the kernel buffers of a loopback connection hold.
    big = b"x" * (24 * 1024 * 1024)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = big if environ["PATH_INFO"] == "/big" else b"ok\n"
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    with ExitStack() as stack:
        server = stack.enter_context(running(app, threads=1, request_timeout=2.0))
        readers = []
        for _ in range(2):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            readers.append(sock)
        time.sleep(0.5)
        status, took = timed_get(httpx.Client(timeout=10),
                                 f"http://127.0.0.1:{server.port}/healthz")
        assert (status, took < 3.0) == (200, True), (status, took)
        time.sleep(2.5)
        # Past the deadline the non-readers are cut: what they can still read ends early.
        for sock in readers:
            received = answer_or_closed(sock, 5)
            assert received is not None and len(received) < len(big)


def test_a_tls_client_that_never_completes_its_handshake_is_cut_at_the_deadline(
        tmp_path: Path, certificate: SelfSignedCertificate) -> None:
    tls = (str(certificate.cert_path), str(certificate.key_path))
    with ExitStack() as stack:
        server = stack.enter_context(running(make_endpoints(tmp_path, stack), tls=tls,
                                             request_timeout=1.5))
        silent = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
        began = time.monotonic()
        assert answer_or_closed(silent, 6) is not None, "kept open for 6 s"
        assert 1.0 <= time.monotonic() - began < 6


class StandbyOf(Leadership):
    """A standby whose leader is at ``url`` (the real LeaderForward sends calls there)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url

    def leader_url(self) -> str | None:
        return self._url


NESTED = 30_000
MALFORMED = {
    "nested JSON 30k deep": ("POST", "/api/v1/silences", b"[" * NESTED + b"]" * NESTED),
    "nested JSON 100k deep": ("POST", "/api/v1/silences", b"[" * 100_000 + b"]" * 100_000),
    "nested JSON in an ack": ("POST", "/api/v1/alerts/abc/ack",
                              b'{"by": ' + b"[" * NESTED + b"]" * NESTED + b"}"),
    "ends_at 10^400": ("POST", "/api/v1/silences",
                       b'{"matchers": ["a=\\"b\\""], "comment": "c", "created_by": "d", '
                       b'"ends_at": 1' + b"0" * 400 + b"}"),
    "ends_at 1e400": ("POST", "/api/v1/silences",
                      b'{"matchers": ["a=\\"b\\""], "comment": "c", "created_by": "d", '
                      b'"ends_at": 1e400}'),
    "duration 10^400": ("POST", "/api/v1/silences",
                        b'{"matchers": ["a=\\"b\\""], "comment": "c", "created_by": "d", '
                        b'"duration": 1' + b"0" * 400 + b"}"),
    "NaN ends_at": ("POST", "/api/v1/silences",
                    b'{"matchers": ["a=\\"b\\""], "comment": "c", "created_by": "d", '
                    b'"ends_at": NaN}'),
    "invalid UTF-8 body": ("POST", "/api/v1/silences", b'{"comment": "\xff\xfe"}'),
    "invalid UTF-8 in the path": ("GET", "/api/v1/silences/%FF%FE", b""),
    "CR/LF in the path": ("POST", "/api/v1/alerts/abc%0D%0AX-Injected:%201/ack",
                          b'{"by": "alice"}'),
}


@pytest.mark.parametrize("role", ["leader", "standby"])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_authenticated_request_gets_a_400_json_error(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], case: str, role: str) -> None:
    method, path, body = MALFORMED[case]
    with ExitStack() as stack:
        leader = stack.enter_context(running(make_endpoints(tmp_path, stack)))
        target = leader
        if role == "standby":
            (tmp_path / "standby").mkdir()
            standby = make_endpoints(tmp_path / "standby", stack)
            standby.forward = LeaderForward(StandbyOf(f"http://127.0.0.1:{leader.port}"),
                                            "standby")
            target = stack.enter_context(running(standby))
        # Raw bytes on the wire: clients would refuse to send some of these.
        with socket.create_connection(("127.0.0.1", target.port), timeout=10) as sock:
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                         + body)
            answer = answer_or_closed(sock, 10)
    assert answer is not None
    head, _, content = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n")[0]
    assert b" 400 " in status_line, (status_line, content[:300])
    assert b"application/json" in head
    error = json.loads(content)
    assert error["status"] == "error" and error["error"]
    assert "Traceback" not in capfd.readouterr().err


def test_the_daemon_logs_only_json_lines_after_slow_and_malformed_clients(
        tmp_path: Path, pg_cluster: ThrowawayCluster) -> None:
    config = tmp_path / "piggywatch.yaml"
    config.write_text(f"""\
targets:
  - name: main
    dsn: {pg_cluster.dsn()}
    collectors: {{database: {{enabled: false}}, statements: {{enabled: false}},
                 tables: {{enabled: false}}}}
state: sqlite:///{tmp_path}/state.db
logging: {{format: json}}
server: {{request_timeout: 2s, max_connections: 16}}
""")
    with DaemonProcess(config, tmp_path, env={"PIGGYWATCH_SERVER__API_TOKEN": TOKEN},
                       token=TOKEN) as daemon:
        with ExitStack() as stack:
            slow = [stack.enter_context(slow_client(daemon.port, None)) for _ in range(40)]
            silent = stack.enter_context(socket.create_connection(("127.0.0.1", daemon.port)))
            began = time.monotonic()
            assert daemon.get("/healthz").status_code == 200
            assert daemon.get("/metrics").status_code == 200
            for method, path, body in MALFORMED.values():
                if "%" not in path:
                    answer = httpx.request(method, daemon.url + path, content=body,
                                           headers=AUTH, timeout=10)
                    assert answer.status_code in (400, 409), (path, answer.text)
            assert answer_or_closed(silent, 6) is not None
            assert all(answer_or_closed(sock, 0.05) is not None for sock in slow)
            print(f"slow clients cut after {time.monotonic() - began:.1f} s")
        assert daemon.get("/healthz").status_code == 200
        code, _ = daemon.terminate()
    assert code == 0
    lines = daemon.stderr().splitlines()
    assert lines
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not not_json, "\n".join(not_json[:20])


def test_the_request_limits_are_server_settings() -> None:
    from piggywatch.config import ServerConfig

    server = ServerConfig.model_validate({"max_connections": 8, "request_timeout": "3s"})
    assert (server.max_connections, server.request_timeout) == (8, 3.0)
    defaults = ServerConfig()
    assert (defaults.max_connections, defaults.request_timeout) == (
        DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT_SECONDS)
    for bad in ({"max_connections": 0}, {"request_timeout": "0s"}):
        with pytest.raises(ValueError):
            ServerConfig.model_validate(bad)


def raw(port: int, head: bytes, body: bytes = b"", wait: float = 15) -> bytes:
    """One request as bytes on the wire; the answer as the server sent it."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                     + body)
        answer = answer_or_closed(sock, wait)
    assert answer is not None
    return answer


def test_a_standby_forwards_hooks_only_as_they_are_and_only_a_few_at_once(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # A leader that takes connections and never answers (its node cut off before the lease
    # moved): a forward waits out its timeout there.
    mute = socket.create_server(("127.0.0.1", 0), backlog=16)
    with ExitStack() as stack:
        stack.callback(mute.close)
        standby = make_endpoints(tmp_path, stack)
        forward = LeaderForward(StandbyOf(f"http://127.0.0.1:{mute.getsockname()[1]}"),
                                "standby")
        standby.forward, standby.forward_hook = forward, forward.hook
        server = stack.enter_context(running(standby))
        post = b"POST /hooks/pagerduty HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        # A header WSGI hands over as Latin-1 cannot be sent on: refused, not a traceback.
        odd = raw(server.port, post + "X-PagerDuty-Signature: v1=\xe9\r\n".encode("latin-1"),
                  b"{}")
        assert b" 400 " in odd.split(b"\r\n")[0] and b"not printable ASCII" in odd
        held: list[bytes] = []
        threads = [threading.Thread(target=lambda: held.append(raw(server.port, post, b"{}")))
                   for _ in range(FORWARDS_AT_ONCE)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        began = time.monotonic()
        busy = raw(server.port, post, b"{}")
        assert b" 503 " in busy.split(b"\r\n")[0] and b"retry" in busy
        # ...at once, and the replica still answers its own checks.
        assert b" 200 " in raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert time.monotonic() - began < 2
        for thread in threads:
            thread.join()
        assert [answer.split(b"\r\n")[0].split(b" ")[1] for answer in held] == [
            b"502"] * FORWARDS_AT_ONCE
    assert "Traceback" not in capfd.readouterr().err
