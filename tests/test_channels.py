"""The channel registry: every channel declared once is a receiver key, its secrets are
redacted, its timeout and throttle are read from its declaration."""

from __future__ import annotations

from piggywatch.alerting.channels import CHANNELS, channel_throttles, longest_timeout
from piggywatch.alerting.settings import Receiver

# One full block per channel, every secret set (the ack hooks' included).
BLOCKS = {
    "pagerduty": {"routing_key": "pd-routing-key-1", "timeout": "7s",
                  "webhook_secrets": ["pd-webhook-secret-a", "pd-webhook-secret-b"],
                  "api_key": "pd-rest-api-key"},
    "slack": {"token": "xoxb-slack-bot-token", "channel": "#oncall", "timeout": "3s",
              "signing_secret": "slack-signing-secret", "app_token": "xapp-slack-app-token"},
    "email": {"to": ["a@example.com"], "from": "p@example.com", "smarthost": "mx:25",
              "password": "smtp-password-1", "timeout": "21s"},
    "webhook": {"url": "https://hooks.example.com/secret-path-1", "timeout": "4s"},
    "alertmanager": {"url": "http://am.example.com:9093", "timeout": "5s"},
}


def _receivers() -> list[Receiver]:
    return [Receiver.model_validate({"name": kind, kind: block})
            for kind, block in BLOCKS.items()]


def test_every_registered_channel_is_a_receiver_key_described_by_its_channel() -> None:
    assert set(BLOCKS) == set(CHANNELS)
    for kind, channel in CHANNELS.items():
        field = Receiver.model_fields[kind]
        assert field.description == channel.description
    for receiver in _receivers():
        assert receiver.channel is CHANNELS[receiver.kind]
        assert isinstance(receiver.channel_config, receiver.channel.config)


def test_every_secret_of_every_channel_is_found_for_redaction() -> None:
    found = {s for r in _receivers() for s in r.channel.secrets(r.channel_config)}
    assert found == {"pd-routing-key-1", "pd-webhook-secret-a", "pd-webhook-secret-b",
                     "pd-rest-api-key", "xoxb-slack-bot-token", "slack-signing-secret",
                     "xapp-slack-app-token", "smtp-password-1",
                     "https://hooks.example.com/secret-path-1"}


def test_timeouts_and_throttles_come_from_the_channel_declarations() -> None:
    receivers = _receivers()
    assert longest_timeout(receivers) == 21.0
    assert longest_timeout([]) == 10.0
    assert channel_throttles(receivers) == {"pagerduty": 0.5, "slack": 1.0}


def test_which_channels_take_acknowledgements_and_speak_http() -> None:
    by_kind = {r.kind: r for r in _receivers()}
    assert {k for k, r in by_kind.items() if r.channel.takes_acks(r.channel_config)} == {
        "pagerduty", "slack"}
    assert {k for k, r in by_kind.items() if r.channel.uses_http(r.channel_config)} == {
        "pagerduty", "webhook", "alertmanager"}
    assert [k for k, c in CHANNELS.items() if not c.echoes_own_acks] == ["pagerduty"]
