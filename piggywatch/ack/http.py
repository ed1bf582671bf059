"""The hooks' HTTP surface: ``POST /hooks/pagerduty``, ``POST /hooks/slack/interactions``
and ``GET/POST /ack/{token}``. None of them takes the API token: each request proves itself
(a PagerDuty or Slack signature, a signed link token). The server hands every ``/hooks/``
and ``/ack/`` path here."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from piggywatch.ack.links import LinkError
from piggywatch.ack.service import MAX_HOOK_BODY_BYTES, AckService, HookAnswer

__all__ = ["HOOK_PREFIXES", "HookEndpoints"]

log = logging.getLogger(__name__)

HOOK_PREFIXES = ("/hooks/", "/ack/")
StartResponse = Callable[..., Any]
_TOKEN = re.compile(r"^/ack/([A-Za-z0-9_.\-]{20,1000})$")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 410: "Gone", 413: "Content Too Large",
            503: "Service Unavailable"}
NOT_HERE = "this replica does not deliver alerts now (a standby, or no route); retry"


# (method, path, environ, body) → the leader's (status, body, content type), or None when
# this replica leads.
HookForward = Callable[[str, str, dict[str, Any], bytes], "tuple[int, bytes, str] | None"]


class HookEndpoints:
    """A WSGI app for the hook paths. ``service`` is swapped by the daemon: None while this
    replica does not deliver; then a standby forwards the request to the leader
    (``forward``), and a replica that cannot answers 503 (so PagerDuty retries)."""

    def __init__(self) -> None:
        self.service: AckService | None = None
        self.forward: HookForward | None = None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        answer = self.answer(environ)
        reason = _REASONS.get(answer.status, "Error")
        headers = [("Content-Type", answer.content_type),
                   ("Content-Length", str(len(answer.body))), ("Cache-Control", "no-store")]
        if answer.content_type.startswith("text/html"):
            # The page never runs script nor sits in a frame; its form posts to itself.
            headers += [("Content-Security-Policy", "default-src 'none'; style-src "
                         "'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
                        ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer")]
        start_response(f"{answer.status} {reason}", headers)
        return [answer.body]

    def answer(self, environ: dict[str, Any]) -> HookAnswer:
        """The answer to one request on a hook path."""
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        peer = str(environ.get("REMOTE_ADDR", ""))
        service = self.service
        body = _read(environ) if method == "POST" else b""
        if service is None and self.forward is not None and body is not None:
            forwarded = self.forward(method, path, environ, body)
            if forwarded is not None:
                return HookAnswer(*forwarded)
        if path in ("/hooks/pagerduty", "/hooks/slack/interactions"):
            if method != "POST":
                return HookAnswer.json(405, {"status": "error", "error": "use POST"})
            if body is None:
                if service is not None:
                    hook = "pagerduty" if path.endswith("pagerduty") else "slack"
                    return service._refuse(hook, "too_large", 413, "the body is over "
                                           f"{MAX_HOOK_BODY_BYTES} bytes", peer)
                return HookAnswer.json(413, {"status": "error", "error": "too large"})
            if service is None:
                return HookAnswer.json(503, {"status": "error", "error": NOT_HERE})
            if path == "/hooks/pagerduty":
                return service.pagerduty_request(
                    body, environ.get("HTTP_X_PAGERDUTY_SIGNATURE"), peer)
            headers = {"x-slack-signature": environ.get("HTTP_X_SLACK_SIGNATURE", ""),
                       "x-slack-request-timestamp":
                           environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")}
            return service.slack_request(body, headers, peer)
        match = _TOKEN.match(path)
        if match is None:
            return _page(404, "Not found", "There is nothing here.")
        if service is None:
            return _page(503, "Try again", "PiggyWatch is changing leaders or does not "
                                           "deliver alerts here; try again in a minute.")
        return self._link(service, match.group(1), method, body)

    def _link(self, service: AckService, token: str, method: str,
              body: bytes | None) -> HookAnswer:
        try:
            claim = service.link_claim(token)
        except LinkError as exc:
            return _page(400, "Link not valid", str(exc))
        action = service.action_label(claim.action)
        if method == "GET":
            title = service.incident_title(claim.incident)
            if not title:
                return _page(410, "Incident ended", "This incident has already ended; there "
                                                    "is nothing to do.")
            # A GET never acts (mail scanners open links); the form posts the token back.
            form = (f'<form method="post"><input type="hidden" name="token" '
                    f'value="{html.escape(token)}"><button type="submit">'
                    f"{html.escape(action)}</button></form>")
            return _page(200, f"{action}?", f"{title}\n\nAs: {claim.who}", form)
        if method != "POST":
            return _page(405, "Not allowed", "Open the link, then press the button.")
        posted = parse_qs((body or b"").decode("utf-8", "replace")).get("token", [""])[0]
        if posted != token:
            # A form from elsewhere cannot know the token: only this page's own form acts.
            return _page(400, "Not done", "The form did not come from this page; open the "
                                          "link from the mail again.")
        return _page(200, "Done", service.link_act(claim))


def _read(environ: dict[str, Any]) -> bytes | None:
    """The body, or None when it is over the limit."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_HOOK_BODY_BYTES or length < 0:
        return None
    return bytes(environ["wsgi.input"].read(length)) if length else b""


def _page(status: int, title: str, text: str, form: str = "") -> HookAnswer:
    paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n"))
    body = ("<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
            "content=\"width=device-width\"><title>PiggyWatch: " + html.escape(title) +
            "</title><style>body{font-family:sans-serif;max-width:36em;margin:3em auto;"
            "padding:0 1em}button{font-size:1.2em;padding:.5em 1.5em}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{paragraphs}{form}</body></html>")
    return HookAnswer(status, body.encode(), "text/html; charset=utf-8")
