"""A Slack workspace in miniature: chat.postMessage and chat.update with token auth and
Block Kit checks, plus an incoming webhook."""

from __future__ import annotations

import copy
import itertools
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from tests.support.servers._http import LocalHTTPServer, RecordedRequest, Reply
from tests.support.servers.blockkit import validate_attachments, validate_blocks

WEBHOOK_PATH = "/services/T0PIGGY00/B0PIGGY00/piggywatchwebhooksecret01"
RESPONSE_PATH = "/actions/T0PIGGY01/1234567890/response-url-secret"


@dataclass
class SlackMessage:
    """A message as the workspace holds it; ``versions`` keeps what each update replaced."""

    channel: str
    ts: str
    text: str
    blocks: list[Any] | None = None
    attachments: list[Any] | None = None
    thread_ts: str | None = None
    reply_broadcast: bool = False
    versions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def colour(self) -> str | None:
        """The first attachment's colour."""
        return self.attachments[0].get("color") if self.attachments else None

    @property
    def all_blocks(self) -> list[Any]:
        """Top-level blocks, then every attachment's."""
        found = list(self.blocks or [])
        for attachment in self.attachments or []:
            found += attachment.get("blocks", [])
        return found


class SlackServer(LocalHTTPServer):
    """Web API at ``url`` (a slack-sdk ``base_url``) and an incoming webhook at
    ``webhook_url``. Channels are named at construction; ``not_in`` lists channels that
    exist but the bot has not joined. Anything Slack would refuse is refused with
    Slack's error code; text is required alongside blocks (our fallback rule)."""

    def __init__(self, token: str = "xoxb-piggywatch-test-token",
                 channels: Iterable[str] = ("oncall",), not_in: Iterable[str] = ()) -> None:
        super().__init__()
        self.token = token
        names = list(channels) + list(not_in)
        self._ids = {name.lstrip("#"): f"C{i + 1:08d}" for i, name in enumerate(names)}
        self._not_in = {self._ids[n.lstrip("#")] for n in not_in}
        self._messages: list[SlackMessage] = []
        self._webhook_messages: list[dict[str, Any]] = []
        self._seq = itertools.count(1)
        self._state_lock = threading.Lock()
        # Socket Mode: the app-level token apps.connections.open takes, and the WebSocket
        # URL it hands out (tests.support.servers.slack_socket_mode sets it).
        self.app_token = "xapp-1-A0PIGGY-1-piggywatch-test-app-token"
        self.socket_url = ""
        # usergroups.users.list: members by user group id.
        self.user_groups: dict[str, list[str]] = {}

    # --- what tests use --------------------------------------------------------------
    @property
    def url(self) -> str:
        """The Web API base URL (``…/api/``)."""
        return f"{self.base_url}/api/"

    @property
    def webhook_url(self) -> str:
        """The incoming webhook's URL."""
        return self.base_url + WEBHOOK_PATH

    def channel_id(self, name: str) -> str:
        """The id of channel ``name`` (with or without ``#``)."""
        return self._ids[name.lstrip("#")]

    @property
    def messages(self) -> list[SlackMessage]:
        """Every message posted through the Web API, thread replies included, in order."""
        with self._state_lock:
            return list(self._messages)

    def message(self, channel: str, ts: str) -> SlackMessage:
        """The message at ``ts`` in ``channel`` (an id or a name), as last updated."""
        channel = self._ids.get(channel.lstrip("#"), channel)
        with self._state_lock:
            return next(m for m in self._messages if m.channel == channel and m.ts == ts)

    def replies(self, channel: str, ts: str) -> list[SlackMessage]:
        """The thread replies under the message at ``ts``."""
        channel = self._ids.get(channel.lstrip("#"), channel)
        with self._state_lock:
            return [m for m in self._messages if m.channel == channel and m.thread_ts == ts]

    @property
    def webhook_messages(self) -> list[dict[str, Any]]:
        """The bodies posted to the incoming webhook, in order."""
        with self._state_lock:
            return list(self._webhook_messages)

    def rate_limit(self, retry_after: int = 1, *, times: int = 1,
                   method: str | None = None) -> None:
        """Answer the next ``times`` calls (of ``method`` only, if given) with HTTP 429."""
        reply = Reply(429, {"ok": False, "error": "ratelimited"},
                      {"Retry-After": str(retry_after)})
        self.script(*[reply] * times, path=f"/api/{method}" if method else None)

    def api_error(self, error: str, *, times: int = 1, method: str | None = None) -> None:
        """Answer the next ``times`` calls (of ``method`` only) with ``{"ok": false}``."""
        reply = Reply(200, {"ok": False, "error": error})
        self.script(*[reply] * times, path=f"/api/{method}" if method else None)

    def delete(self, channel: str, ts: str) -> None:
        """Delete a message, as a user can (later updates get message_not_found)."""
        doomed = self.message(channel, ts)
        with self._state_lock:
            self._messages.remove(doomed)

    @property
    def response_url(self) -> str:
        """Where interaction payloads say to answer (Slack's hooks.slack.com/actions/…)."""
        return self.base_url + RESPONSE_PATH

    @property
    def responses(self) -> list[dict[str, Any]]:
        """The bodies posted to the response_url, in order."""
        return [r.json() for r in self.requests if r.path == RESPONSE_PATH]

    # --- the API ---------------------------------------------------------------------
    def handle(self, request: RecordedRequest) -> Reply:
        if request.path == WEBHOOK_PATH:
            return self._webhook(request)
        if request.path == RESPONSE_PATH:
            return Reply(200, {"ok": True})
        if request.path == "/api/apps.connections.open":
            app = (request.header("authorization") or "").removeprefix("Bearer ").strip()
            if app != self.app_token:
                return _error("invalid_auth")
            if not self.socket_url:
                return _error("internal_error")
            return Reply(200, {"ok": True, "url": self.socket_url})
        if request.path.startswith("/services/"):
            return Reply(404, "no_service")
        if not request.path.startswith("/api/"):
            return Reply(404, "not found")
        method = request.path.removeprefix("/api/")
        params = _params(request)
        if params is None:
            return _error("invalid_json")
        token = (request.header("authorization") or "").removeprefix("Bearer ").strip() or (
            params.get("token"))
        if not token:
            return _error("not_authed")
        if token != self.token:
            return _error("invalid_auth")
        if method == "chat.postMessage":
            return self._post(params)
        if method == "chat.update":
            return self._update(params)
        if method == "usergroups.users.list":
            group = str(params.get("usergroup") or request.query.get("usergroup", [""])[0])
            if group not in self.user_groups:
                return _error("no_such_subteam")
            return Reply(200, {"ok": True, "users": self.user_groups[group]})
        return _error("unknown_method")

    def _post(self, params: dict[str, Any]) -> Reply:
        channel = self._resolve_channel(str(params.get("channel") or ""))
        if channel is None:
            return _error("channel_not_found")
        if channel in self._not_in:
            return _error("not_in_channel")
        refusal = _content_errors(params)
        if refusal is not None:
            return refusal
        thread_ts = params.get("thread_ts")
        with self._state_lock:
            if thread_ts is not None and not any(m.channel == channel and m.ts == thread_ts
                                                 for m in self._messages):
                return _error("thread_not_found")
            ts = f"{int(time.time())}.{next(self._seq):06d}"
            message = SlackMessage(
                channel=channel, ts=ts, text=params["text"], blocks=params.get("blocks"),
                attachments=params.get("attachments"), thread_ts=thread_ts,
                reply_broadcast=bool(params.get("reply_broadcast")))
            self._messages.append(message)
        return Reply(200, {"ok": True, "channel": channel, "ts": ts,
                           "message": _as_json(message)})

    def _update(self, params: dict[str, Any]) -> Reply:
        channel = str(params.get("channel") or "")
        if channel not in self._ids.values():
            # chat.update wants the id chat.postMessage returned, not a name.
            return _error("channel_not_found")
        if not params.get("ts"):
            return _error("message_not_found")
        refusal = _content_errors(params)
        if refusal is not None:
            return refusal
        with self._state_lock:
            found = [m for m in self._messages if m.channel == channel and m.ts == params["ts"]]
            if not found:
                return _error("message_not_found")
            message = found[0]
            message.versions.append(_as_json(message))
            message.text = params["text"]
            if "blocks" in params:
                message.blocks = params["blocks"]
            if "attachments" in params:
                message.attachments = params["attachments"]
            answer = _as_json(message)
        return Reply(200, {"ok": True, "channel": channel, "ts": message.ts,
                           "text": message.text, "message": answer})

    def _webhook(self, request: RecordedRequest) -> Reply:
        try:
            body = request.json()
        except ValueError:
            return Reply(400, "invalid_payload")
        if not isinstance(body, dict):
            return Reply(400, "invalid_payload")
        refusal = _content_errors(body)
        if refusal is not None:
            # A webhook answers with the bare error code and a 400.
            return Reply(400, str(refusal.body["error"]))
        with self._state_lock:
            self._webhook_messages.append(body)
        return Reply(200, "ok")

    def _resolve_channel(self, name: str) -> str | None:
        if name in self._ids.values():
            return name
        return self._ids.get(name.lstrip("#"))


def _params(request: RecordedRequest) -> dict[str, Any] | None:
    """A Web API call's arguments, sent as JSON or as a form (blocks as JSON strings)."""
    content_type = request.header("content-type") or ""
    if content_type.startswith("application/json"):
        try:
            body = request.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None
    form = {k: v[-1] for k, v in parse_qs(request.body.decode()).items()}
    params: dict[str, Any] = dict(form)
    for key in ("blocks", "attachments"):
        if key in form:
            try:
                params[key] = json.loads(form[key])
            except ValueError:
                return None
    return params


def _content_errors(params: dict[str, Any]) -> Reply | None:
    text = params.get("text")
    if not isinstance(text, str) or not text.strip():
        return _error("no_text")
    if len(text) > 40000:
        return _error("msg_too_long")
    if "blocks" in params:
        problems = validate_blocks(params["blocks"])
        if problems:
            return _error("invalid_blocks", problems)
    if "attachments" in params:
        problems = validate_attachments(params["attachments"])
        if problems:
            return _error("invalid_attachments", problems)
    return None


def _error(error: str, problems: list[str] | None = None) -> Reply:
    body: dict[str, Any] = {"ok": False, "error": error}
    if problems:
        body["errors"] = problems
        body["response_metadata"] = {"messages": [f"[ERROR] {p}" for p in problems]}
    return Reply(200, body)


def _as_json(message: SlackMessage) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "message", "ts": message.ts, "text": message.text}
    if message.blocks is not None:
        body["blocks"] = copy.deepcopy(message.blocks)
    if message.attachments is not None:
        body["attachments"] = copy.deepcopy(message.attachments)
    if message.thread_ts is not None:
        body["thread_ts"] = message.thread_ts
    return body
