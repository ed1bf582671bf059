"""Logging (JSON in containers) and Sentry for the daemon's own errors, both scrubbed of secrets."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

# user:password@ in URLs and password=... in libpq keyword strings.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]+)(?=@)",
                           re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<secret>'[^']*'|\S+)", re.IGNORECASE)
MASK = "***"
# What stands for the path and query of a secret URL: scheme://host/… keeps where it points.
ELLIPSIS = "/…"


def redact_url(url: str) -> str:
    """``scheme://host[:port]/…``: where a URL points, without its path, query or user info
    (a webhook's path or query is often its credential)."""
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "(an unparsable URL)"
    if not parts.scheme or not host:
        return "(a URL without scheme or host)"
    where = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    return where + (ELLIPSIS if parts.path.strip("/") or parts.query or parts.fragment else "")


def _token_like(piece: str) -> bool:
    # Long enough and not a plain word ("services", "hooks"): Slack's T…/B…/secret parts,
    # a ?token= value. Words stay, or every log line saying "piggywatch" would be masked.
    return len(piece) >= 8 and (any(c.isdigit() for c in piece) or len(piece) >= 20)


def secret_url_parts(value: str) -> tuple[str, set[str]]:
    """For a URL with a path or query: its host[:port], and the pieces of it to mask wherever
    they appear on their own (a server echoing ``Cannot POST /path``): the path and the
    query, raw and decoded, and each token-like path segment and query value. ``("", set())``
    for anything else."""
    try:
        parts = urlsplit(value.strip())
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "", set()
    path = parts.path.strip("/")
    if not parts.scheme or not host or not (path or parts.query or parts.fragment):
        return "", set()
    pieces: set[str] = set()
    for whole in (parts.path.rstrip("/"), parts.query, parts.fragment):
        if len(whole.strip("/")) >= 8:
            pieces.update((whole, unquote(whole), unquote_plus(whole)))
    for form in (path, unquote(path)):
        pieces.update(segment for segment in form.split("/") if _token_like(segment))
    for _, item in parse_qsl(parts.query, keep_blank_values=True):
        if _token_like(item):
            pieces.add(item)
    return host + (f":{port}" if port is not None else ""), pieces


class Redactor:
    """Removes known secret values and anything shaped like a password from text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self._hosts: set[str] = set()
        self._secret_urls: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Remember secret values (whole DSNs, tokens); their password parts are added too.
        A secret URL with a path or query (a webhook) is redacted by structure: any URL to
        its host shows as ``scheme://host/…``, and its path, query and token-like parts are
        masked wherever they appear alone."""
        found = set(self._secrets)
        hosts = set(self._hosts)
        for secret in secrets:
            if not secret:
                continue
            found.add(secret)
            for pattern in (_URL_PASSWORD, _KV_PASSWORD):
                for match in pattern.finditer(secret):
                    found.add(match.group("secret").strip("'"))
            host, pieces = secret_url_parts(secret)
            if host:
                hosts.add(host.lower())
                found.update(pieces)
        urls = None
        if hosts:
            # scheme://[user@]host[:port] then a path, query or fragment: kept up to the host.
            alternatives = "|".join(re.escape(h) for h in sorted(hosts, key=len, reverse=True))
            urls = re.compile(rf"(?P<head>[a-z][a-z0-9+.-]*://(?:[^\s/@]*@)?(?:{alternatives}))"
                              rf"(?![\w.:-])(?P<rest>[/?#][^\s\"'<>`]*)", re.IGNORECASE)
        with self._lock:
            # Longest first, so a DSN is masked whole before its password part is looked at.
            self._secrets = tuple(sorted((s for s in found if len(s) >= 3), key=len, reverse=True))
            self._hosts = hosts
            self._secret_urls = urls

    def scrub(self, text: str) -> str:
        """``text`` with every secret replaced by ***, and URLs to a secret URL's host cut
        to ``scheme://host/…``."""
        if self._secret_urls is not None:
            text = self._secret_urls.sub(lambda m: m.group("head") + ELLIPSIS, text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
        return _KV_PASSWORD.sub(lambda m: m.group("head") + MASK, text)

    def scrub_any(self, value: Any) -> Any:
        """Scrub strings anywhere inside nested dicts, lists and tuples."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self.scrub_any(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.scrub_any(v) for v in value)
        return value


redactor = Redactor()


class ScrubbingFormatter(logging.Formatter):
    """Scrubs tracebacks as they are formatted (messages are scrubbed at record creation)."""

    def formatException(self, ei: Any) -> str:
        return redactor.scrub(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return redactor.scrub(super().formatStack(stack_info))


class JsonFormatter(ScrubbingFormatter):
    """One JSON object per line, the shape log shippers expect."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("target", "collector"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


_base_factory = logging.getLogRecordFactory()


def _scrubbed_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    # Scrub at creation, before anything (Sentry's logging hook included) reads the record.
    record = _base_factory(*args, **kwargs)
    try:
        message = record.getMessage()
    except Exception:  # a bad format string must not lose the log line
        message = str(record.msg)
    record.msg = redactor.scrub(message)
    record.args = None
    return record


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure the root logger: JSON when stderr is not a terminal (or when asked)."""
    logging.setLogRecordFactory(_scrubbed_record)
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else ScrubbingFormatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter that would drown the daemon's own lines at INFO.
    for noisy in ("apscheduler", "httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def setup_sentry(dsn: str, environment: str, release: str) -> bool:
    """Send the daemon's own unexpected errors to Sentry; an empty dsn sends nothing.

    Returns whether events will be sent. With no dsn the SDK is not even imported (it
    costs ~6 MB of memory), so SENTRY_DSN in the environment cannot turn it on either.
    """
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration

    def before_send(event: Any, hint: Any) -> Any:
        logentry = event.get("logentry")
        if isinstance(logentry, dict) and logentry.get("params"):
            # Params are raw objects here; serialise them ourselves so none escapes unscrubbed.
            logentry["params"] = [str(p) for p in logentry["params"]]
        return redactor.scrub_any(event)

    def before_breadcrumb(crumb: Any, hint: Any) -> Any:
        return redactor.scrub_any(crumb)

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=f"piggywatch@{release}",
        send_default_pii=False,
        include_local_variables=False,
        before_send=before_send,
        before_breadcrumb=before_breadcrumb,
        integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
        default_integrations=True,
    )
    return True
