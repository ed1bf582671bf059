"""Secrets never leave the process: not in log lines, not in what Sentry receives."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from piggywatch.observability import Redactor

PASSWORD = "Xy7-very-secret-pw"
DSN = f"postgresql://monitor:{PASSWORD}@127.0.0.1:1/app"


class SentryIngest:
    """A local endpoint that accepts Sentry envelopes like sentry.io's ingest does."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        ingest = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding == "br":
                    import brotli  # type: ignore[import-not-found]

                    body = brotli.decompress(body)
                assert self.path.endswith("/envelope/"), self.path
                ingest.envelopes.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.server.server_address[1]}/42"


@pytest.fixture
def ingest() -> Iterator[SentryIngest]:
    server = SentryIngest()
    yield server
    server.server.shutdown()


SCRIPT = """
import logging, sys, sentry_sdk
from piggywatch.observability import redactor, setup_logging, setup_sentry
dsn, secret = sys.argv[1], sys.argv[2]
redactor.add([secret])
setup_logging("INFO", "json")
print(setup_sentry(dsn, "test", "0"), file=sys.stderr)
log = logging.getLogger("piggywatch.test")
log.error("cannot reach %s", secret)
try:
    raise RuntimeError(f"connection to {secret} failed")
except RuntimeError:
    log.exception("collector crashed while using %s", secret)
sentry_sdk.flush(5)
"""


def run_script(sentry_dsn: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, sentry_dsn, DSN], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **env})


def test_sentry_receives_errors_with_secrets_scrubbed(ingest: SentryIngest) -> None:
    result = run_script(ingest.dsn, {})
    assert result.returncode == 0, result.stderr
    assert len(ingest.envelopes) >= 2, "both errors should reach Sentry"
    everything = b"".join(ingest.envelopes).decode()
    assert "cannot reach" in everything and "collector crashed" in everything
    assert "RuntimeError" in everything
    assert PASSWORD not in everything
    # ... and the log lines on stderr are JSON without the password either.
    lines = [json.loads(ln) for ln in result.stderr.splitlines() if ln.startswith("{")]
    assert [ln["level"] for ln in lines] == ["error", "error"]
    assert "***" in lines[0]["message"]
    assert PASSWORD not in result.stderr


def test_empty_dsn_sends_nothing_even_with_SENTRY_DSN_set(ingest: SentryIngest) -> None:
    result = run_script("", {"SENTRY_DSN": ingest.dsn})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == "False"
    assert ingest.envelopes == []


@pytest.mark.parametrize("text", [
    f"dsn {DSN} failed",
    f"host=127.0.0.1 password={PASSWORD} dbname=app",
    f"host=127.0.0.1 password='{PASSWORD}' dbname=app",
    f"postgresql://other:{PASSWORD}@db/x",
])
def test_redactor_masks_dsn_passwords(text: str) -> None:
    redactor = Redactor()
    redactor.add([DSN])
    assert PASSWORD not in redactor.scrub(text)
