"""Slack's side of buttons: an interaction sender (signed, form-encoded ``payload=``, as
Slack posts to a request URL) and a Socket Mode stand-in (a WebSocket server that sends
Slack-shaped envelopes and records their acknowledgements)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx
from websockets.sync.server import Server, ServerConnection, serve

__all__ = ["SlackInteractionSender", "SocketModeServer", "block_actions"]


def block_actions(message: dict[str, Any], action_id: str, *, user_id: str = "U0ONCALL1",
                  username: str = "jane", response_url: str = "", channel_id: str = "C00000001",
                  message_ts: str = "1700000000.000100") -> dict[str, Any]:
    """A ``block_actions`` payload as Slack sends it for a press of button ``action_id`` in
    ``message`` (as posted, attachments and all)."""
    button, block = _find_button(message, action_id)
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": username, "name": username,
                 "team_id": "T0PIGGY01"},
        "api_app_id": "A0PIGGY01",
        "token": "verification-token-deprecated",
        "container": {"type": "message", "message_ts": message_ts, "attachment_id": 1,
                      "channel_id": channel_id, "is_ephemeral": False, "is_app_unfurl": False},
        "trigger_id": "1234567890123.1234567890.abcdef0123456789abcdef0123456789",
        "team": {"id": "T0PIGGY01", "domain": "piggybong"},
        "enterprise": None, "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": "oncall"},
        "message": {"type": "message", "subtype": "bot_message", "ts": message_ts,
                    "bot_id": "B0PIGGY01", **message},
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [{"action_id": action_id, "block_id": block.get("block_id", ""),
                     "text": button["text"], "value": button.get("value", ""),
                     "style": button.get("style"), "type": "button",
                     "action_ts": f"{time.time():.6f}"}],
    }


def _find_button(message: dict[str, Any], action_id: str) -> tuple[dict[str, Any],
                                                                     dict[str, Any]]:
    blocks = list(message.get("blocks") or [])
    for attachment in message.get("attachments") or []:
        blocks += attachment.get("blocks") or []
    for block in blocks:
        for element in block.get("elements") or []:
            if element.get("action_id") == action_id:
                return element, block
    raise AssertionError(f"the message has no button {action_id!r}")


class SlackInteractionSender:
    """Posts interaction payloads to a request URL the way Slack does."""

    def __init__(self, url: str, signing_secret: str) -> None:
        self.url = url
        self.signing_secret = signing_secret

    def request(self, payload: dict[str, Any], *, timestamp: float | None = None,
                secret: str | None = None, sign: bool = True) -> tuple[bytes, dict[str, str]]:
        """The body and headers Slack would send."""
        body = urlencode({"payload": json.dumps(payload)}).encode()
        ts = str(int(time.time() if timestamp is None else timestamp))
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)"}
        if sign:
            base = b"v0:" + ts.encode() + b":" + body
            digest = hmac.new((secret or self.signing_secret).encode(), base,
                              hashlib.sha256).hexdigest()
            headers |= {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}
        return body, headers

    def press(self, payload: dict[str, Any], **kw: Any) -> httpx.Response:
        """POST the payload; returns Slack's view of the answer."""
        body, headers = self.request(payload, **kw)
        return httpx.post(self.url, content=body, headers=headers, timeout=10)


class SocketModeServer:
    """A WebSocket endpoint that greets with ``hello``, sends envelopes on demand and
    records the acknowledgements (``{"envelope_id": …}``) the client sends back."""

    def __init__(self) -> None:
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: list[ServerConnection] = []
        self._acks: list[str] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()

    def start(self) -> SocketModeServer:
        """Listen on a free loopback port."""
        self._server = serve(self._handle, "127.0.0.1", 0)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="socket-mode")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> SocketModeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """What apps.connections.open hands out."""
        assert self._server is not None
        port = self._server.socket.getsockname()[1]
        return f"ws://127.0.0.1:{port}/link/?ticket={uuid.uuid4()}&app_id=A0PIGGY01"

    @property
    def acks(self) -> list[str]:
        """The envelope ids the client acknowledged, in order."""
        with self._lock:
            return list(self._acks)

    def send_interactive(self, payload: dict[str, Any]) -> str:
        """Send an ``interactive`` envelope to every connection; returns its id."""
        envelope_id = str(uuid.uuid4())
        envelope = {"envelope_id": envelope_id, "type": "interactive",
                    "accepts_response_payload": False, "payload": payload,
                    "retry_attempt": 0, "retry_reason": ""}
        with self._lock:
            connections = list(self._connections)
        assert connections, "no Socket Mode client is connected"
        for connection in connections:
            connection.send(json.dumps(envelope))
        return envelope_id

    def _handle(self, connection: ServerConnection) -> None:
        with self._lock:
            self._connections.append(connection)
        connection.send(json.dumps({"type": "hello", "num_connections": 1,
                                    "debug_info": {"host": "applink-test",
                                                   "approximate_connection_time": 18060},
                                    "connection_info": {"app_id": "A0PIGGY01"}}))
        self.connected.set()
        try:
            for message in connection:
                data = json.loads(message)
                if isinstance(data, dict) and "envelope_id" in data:
                    with self._lock:
                        self._acks.append(str(data["envelope_id"]))
        except Exception:  # the client went away
            pass
        finally:
            with self._lock:
                self._connections.remove(connection)
