"""Slack Socket Mode: button presses over an outbound WebSocket, for a PiggyWatch that
nobody can reach from outside. slack-sdk's built-in client (no extra library) opens the
connection with ``apps.connections.open`` and the app-level token, reconnects on its own,
and each envelope is acknowledged at once, before the press is handled."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from piggywatch.alerting.channels.slack import SlackReceiver

if TYPE_CHECKING:
    from slack_sdk.socket_mode.builtin import SocketModeClient
    from slack_sdk.socket_mode.request import SocketModeRequest

    from piggywatch.ack.service import AckService

__all__ = ["SlackSocketMode"]

log = logging.getLogger(__name__)


class SlackSocketMode:
    """One Socket Mode connection for one Slack receiver's app."""

    def __init__(self, receiver: str, settings: SlackReceiver, service: AckService) -> None:
        assert settings.app_token is not None
        self._receiver = receiver
        self._settings = settings
        self._service = service
        self._client: SocketModeClient | None = None

    def start(self) -> None:
        """Connect (in the background: a Slack outage never holds the daemon's start)."""
        from slack_sdk import WebClient
        from slack_sdk.socket_mode.builtin import SocketModeClient

        assert self._settings.app_token is not None
        web = WebClient(base_url=self._settings.base_url,
                        timeout=max(1, int(self._settings.timeout)))
        client = SocketModeClient(app_token=self._settings.app_token.get_secret_value(),
                                  web_client=web, auto_reconnect_enabled=True,
                                  logger=logging.getLogger("piggywatch.ack.socket_mode.sdk"))
        client.socket_mode_request_listeners.append(self._on_request)
        self._client = client
        try:
            client.connect()
        except Exception as exc:  # the SDK retries on its own once connected once
            log.warning("Slack Socket Mode for receiver %s could not connect (%s); retrying",
                        self._receiver, type(exc).__name__)
            client.connect_to_new_endpoint(force=True)

    def _on_request(self, client: Any, request: SocketModeRequest) -> None:
        from slack_sdk.socket_mode.response import SocketModeResponse

        # Acknowledged first: Slack resends an envelope it does not hear back about in 3 s.
        client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
        if request.type == "interactive" and isinstance(request.payload, dict):
            self._service.slack_payload(request.payload, self._receiver)

    @property
    def connected(self) -> bool:
        """Whether the WebSocket is open."""
        return self._client is not None and self._client.is_connected()

    def stop(self) -> None:
        """Close the connection."""
        if self._client is not None:
            self._client.close()
            self._client = None
