"""A small client for a running daemon's /api/v1, used by `piggywatch alerts / ack / silence`."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_URL = "http://127.0.0.1:9790"

# What a terminal acts on instead of showing: C0 controls (newline included: one row per
# alert), DEL, C1 controls, and the bidi marks, embeddings, overrides and isolates that
# reorder what follows them (Trojan Source), plus the Unicode line and paragraph separators.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e"
                          "\u2066-\u2069\u2028\u2029]")


class ApiClientError(Exception):
    """The daemon could not be reached or refused the call; the message says why."""


class ApiClient:
    """Calls the API with the bearer token; every failure becomes an ApiClientError."""

    def __init__(self, url: str, token: str, *, cacert: str | None = None,
                 timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._verify: str | bool = cacert or True
        self._timeout = timeout

    def get(self, path: str) -> Any:
        """GET and return ``data``."""
        return self._call("GET", path)

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST a JSON body and return ``data``."""
        return self._call("POST", path, body)

    def delete(self, path: str) -> Any:
        """DELETE and return ``data``."""
        return self._call("DELETE", path)

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        if not self._token:
            raise ApiClientError("no API token: set PIGGYWATCH_API_TOKEN or pass --token")
        # Imported here: `piggywatch run` never calls the API, and httpx costs ~12 MB of RSS.
        import httpx

        try:
            response = httpx.request(method, self.url + path, json=body,
                                     headers={"Authorization": f"Bearer {self._token}"},
                                     timeout=self._timeout, verify=self._verify)
        except httpx.HTTPError as exc:
            raise ApiClientError(f"cannot reach {self.url}: {exc}") from None
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        if response.status_code == 401:
            raise ApiClientError(f"{self.url} refused the API token (401)")
        if response.status_code != 200:
            reason = payload.get("error") if isinstance(payload, dict) else None
            raise ApiClientError(f"{method} {path}: {response.status_code} "
                                 f"{reason or response.reason_phrase}")
        return payload.get("data")


def alerts_table(alerts: Sequence[Mapping[str, Any]], now: float | None = None) -> str:
    """The alerts as a fixed-width table, most severe first."""
    ranks = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    at = time.time() if now is None else now
    rows = [("FINGERPRINT", "ALERT", "SEVERITY", "STATE", "LEVEL", "ACKED BY", "SINCE",
             "LABELS")]
    for alert in sorted(alerts, key=lambda a: (ranks.get(a["labels"].get("severity", ""), 9),
                                               a["labels"].get("alertname", ""))):
        labels = alert["labels"]
        state = alert["state"]
        if alert.get("silenced_by"):
            state += " (silenced)"
        elif alert.get("inhibited"):
            state += " (inhibited)"
        ack = alert.get("ack") or {}
        acked_by = ack.get("by", "-")
        if ack.get("source"):
            acked_by += f" ({ack['source']})"
        rest = ",".join(f"{k}={v}" for k, v in sorted(labels.items())
                        if k not in ("alertname", "severity"))
        rows.append((alert["fingerprint"], labels.get("alertname", ""),
                     labels.get("severity", ""), state, str(alert.get("level") or "-"),
                     acked_by, _ago(at - float(alert.get("activeAtUnix", at))), rest))
    return _table(rows)


def silences_table(silences: Sequence[Mapping[str, Any]]) -> str:
    """Silences as a fixed-width table."""
    rows = [("ID", "STATE", "ENDS", "CREATED BY", "MATCHERS", "COMMENT")]
    for s in silences:
        rows.append((s["id"], s["state"], time.strftime("%Y-%m-%d %H:%M", time.localtime(
            float(s["ends_at"]))), s.get("created_by", ""), " ".join(s["matchers"]),
            s.get("comment", "")))
    return _table(rows)


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on shown as an escape (``\\x1b``,
    ``\\u202e``): label values, comments and names come from the API, not from us."""
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _table(cells: Sequence[tuple[str, ...]]) -> str:
    rows = [tuple(printable(cell) for cell in row) for row in cells]
    # The last column is free text, so it is not padded.
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                     + "  " + row[-1] for row in rows)


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
