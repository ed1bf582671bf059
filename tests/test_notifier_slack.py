"""SlackNotifier against a local Slack (Web API through slack-sdk, and incoming webhooks)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from piggywatch.alerting.channels import build_notifier
from piggywatch.alerting.channels.slack import SlackReceiver
from piggywatch.alerting.model import Action, Outcome
from piggywatch.alerting.notifiers.slack import ACK_COLOUR, SlackNotifier
from piggywatch.alerting.settings import Receiver
from tests.notification_samples import EXTERNAL_URL, RUNBOOK, T0, alert, notification, resolved
from tests.support.ports import free_port
from tests.support.servers import Reply, SlackServer

TOKEN = "xoxb-piggywatch-test-token"
STARTED = "Started <!date^1767225600^{date_short_pretty} {time}|2026-01-01T00:00:00.000Z>"


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    with SlackServer(token=TOKEN, channels=("oncall",), not_in=("leads",)) as server:
        yield server


def bot(slack: SlackServer, *, channel: str = "#oncall", token: str = TOKEN,
        timeout: float = 5.0) -> SlackNotifier:
    settings = SlackReceiver(token=token, channel=channel, base_url=slack.url,  # type: ignore[arg-type]
                             timeout=timeout)
    return SlackNotifier(settings)


def webhook(url: str) -> SlackNotifier:
    return SlackNotifier(SlackReceiver(webhook_url=url))  # type: ignore[arg-type]


def fields(blocks: list[dict[str, Any]]) -> dict[str, str]:
    section = next(b for b in blocks if b["type"] == "section" and "fields" in b)
    return dict(f["text"].split("\n", 1) for f in section["fields"])


def test_trigger_posts_the_exact_block_kit_message(slack: SlackServer) -> None:
    delivery = bot(slack).send(notification(), {})

    assert delivery.outcome is Outcome.ACCEPTED
    assert delivery.receipt == {"channel": "C00000001", "ts": slack.messages[0].ts,
                                "level": "1", "state": "open"}
    [message] = slack.messages
    assert message.channel == slack.channel_id("oncall")
    assert message.text == "[HIGH] PostgresConnectionsHigh (target=main): Firing (1 alert)"
    assert message.blocks is None
    assert message.attachments == [{"color": "danger", "blocks": [
        {"type": "header", "text": {"type": "plain_text", "emoji": True,
                                    "text": ":rotating_light: PostgresConnectionsHigh "
                                            "(target=main)"}},
        {"type": "section", "text": {
            "type": "mrkdwn",
            "text": "main: 85% of usable connections in use\n"
                    "Client connections are above 80% of max_connections."}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": "*Status*\nFiring (1 alert)"},
            {"type": "mrkdwn", "text": "*Severity*\nhigh"},
            {"type": "mrkdwn", "text": "*Value*\n0.85"},
            {"type": "mrkdwn", "text": "*Target*\nmain"},
            {"type": "mrkdwn", "text": "*Level*\n1"},
        ]},
        {"type": "context", "elements": [
            {"type": "mrkdwn",
             "text": "`alertname=PostgresConnectionsHigh`  `severity=high`  `target=main`"},
            {"type": "mrkdwn", "text": STARTED},
        ]},
        {"type": "actions", "elements": [
            {"type": "button", "action_id": "runbook",
             "text": {"type": "plain_text", "text": "Runbook"}, "url": RUNBOOK},
            {"type": "button", "action_id": "piggywatch",
             "text": {"type": "plain_text", "text": "PiggyWatch"}, "url": EXTERNAL_URL},
        ]},
    ]}]
    sent = slack.requests[0]
    assert sent.path == "/api/chat.postMessage"
    assert sent.header("authorization") == f"Bearer {TOKEN}"
    assert sent.json()["unfurl_links"] is False


def test_threshold_is_a_field_and_medium_is_a_warning(slack: SlackServer) -> None:
    bot(slack).send(notification(alert(severity="medium", threshold="0.8")), {})

    [message] = slack.messages
    assert message.colour == "warning"
    assert fields(message.all_blocks)["*Threshold*"] == "0.8"


def test_acknowledge_updates_the_message_in_place_and_replies_in_thread(
        slack: SlackServer) -> None:
    slack_bot = bot(slack)
    firing = alert()
    receipt = slack_bot.send(notification(firing), {}).receipt
    ack = notification(firing, action=Action.ACKNOWLEDGE, acked_by="alice",
                       acked_at=T0 + 600, id="n-2")

    delivery = slack_bot.send(ack, receipt)

    assert delivery.outcome is Outcome.ACCEPTED
    assert delivery.receipt == receipt
    message = slack.message(receipt["channel"], receipt["ts"])
    assert len(message.versions) == 1
    assert message.colour == ACK_COLOUR
    assert message.text == ("[HIGH] PostgresConnectionsHigh (target=main): "
                            "Acknowledged by alice at 2026-01-01T00:10:00.000Z")
    assert message.all_blocks[0]["text"]["text"] == ":eyes: PostgresConnectionsHigh (target=main)"
    assert fields(message.all_blocks)["*Status*"] == (
        "Acknowledged by alice at 2026-01-01T00:10:00.000Z")
    context = next(b for b in message.all_blocks if b["type"] == "context")
    assert context["elements"][1]["text"] == (
        f"{STARTED} · Acknowledged by alice "
        "<!date^1767226200^{date_short_pretty} {time}|2026-01-01T00:10:00.000Z>")
    [reply] = slack.replies(receipt["channel"], receipt["ts"])
    assert reply.text == (":eyes: Acknowledged by alice "
                          "<!date^1767226200^{date_short_pretty} {time}|2026-01-01T00:10:00.000Z>")
    assert reply.reply_broadcast is False
    assert len([m for m in slack.messages if m.thread_ts is None]) == 1


def test_resolve_turns_the_message_green(slack: SlackServer) -> None:
    slack_bot = bot(slack)
    firing = alert()
    receipt = slack_bot.send(notification(firing), {}).receipt

    delivery = slack_bot.send(notification(resolved(firing), action=Action.RESOLVE, id="n-3",
                                           created_at=T0 + 900), receipt)

    assert delivery.outcome is Outcome.ACCEPTED
    message = slack.message(receipt["channel"], receipt["ts"])
    assert message.colour == "good"
    assert message.text == "[HIGH] PostgresConnectionsHigh (target=main): Resolved"
    assert fields(message.all_blocks)["*Status*"] == "Resolved"
    [reply] = slack.replies(receipt["channel"], receipt["ts"])
    assert reply.text.startswith(":white_check_mark: Resolved <!date^1767226500^")


def test_firing_again_after_resolving_posts_a_new_message(slack: SlackServer) -> None:
    slack_bot = bot(slack)
    firing = alert()
    first = slack_bot.send(notification(firing), {}).receipt
    done = slack_bot.send(notification(resolved(firing), action=Action.RESOLVE, id="n-2"),
                          first).receipt
    assert done["state"] == "resolved"

    again = slack_bot.send(notification(alert(starts_at=T0 + 3600), id="n-3"), done)

    assert again.receipt["ts"] != first["ts"]
    assert again.receipt["state"] == "open"
    top = [m for m in slack.messages if m.thread_ts is None]
    assert [m.colour for m in top] == ["good", "danger"]


def test_escalation_is_broadcast_from_the_thread_and_a_repeat_is_not(
        slack: SlackServer) -> None:
    slack_bot = bot(slack)
    firing = alert(severity="critical")
    first = slack_bot.send(notification(firing), {}).receipt

    escalated = slack_bot.send(notification(firing, level=2, id="n-2"), first)
    repeated = slack_bot.send(notification(firing, level=2, id="n-3"), escalated.receipt)

    assert escalated.receipt == {**first, "level": "2"}
    assert repeated.receipt == escalated.receipt
    up, again = slack.replies(first["channel"], first["ts"])
    assert up.text.startswith(":arrow_double_up: Escalated to level 2 <!date^")
    assert up.text.endswith(": Firing (1 alert), still unacknowledged")
    assert up.reply_broadcast is True
    assert again.text.startswith(":repeat: Still firing <!date^")
    assert again.reply_broadcast is False
    message = slack.message(first["channel"], first["ts"])
    assert fields(message.all_blocks)["*Level*"] == "2"
    assert len(message.versions) == 2


def test_a_deleted_message_is_replaced_by_a_new_one(slack: SlackServer) -> None:
    slack_bot = bot(slack)
    firing = alert()
    receipt = slack_bot.send(notification(firing), {}).receipt
    slack.delete(receipt["channel"], receipt["ts"])

    delivery = slack_bot.send(notification(firing, action=Action.ACKNOWLEDGE, acked_by="a",
                                           id="n-2"), receipt)

    assert delivery.outcome is Outcome.ACCEPTED
    assert delivery.receipt["ts"] != receipt["ts"]
    [message] = slack.messages
    assert message.colour == ACK_COLOUR


def test_a_failed_thread_reply_is_retried_without_a_second_reply(slack: SlackServer) -> None:
    slack_bot = bot(slack)
    firing = alert()
    receipt = slack_bot.send(notification(firing), {}).receipt
    ack = notification(firing, action=Action.ACKNOWLEDGE, acked_by="alice", id="n-2")
    slack.script(Reply(503, "<html>Service Unavailable</html>"), path="/api/chat.postMessage")

    first = slack_bot.send(ack, receipt)
    second = slack_bot.send(ack, receipt)

    assert (first.outcome, second.outcome) == (Outcome.RETRY, Outcome.ACCEPTED)
    assert len(slack.replies(receipt["channel"], receipt["ts"])) == 1
    assert len(slack.message(receipt["channel"], receipt["ts"]).versions) == 2


def test_ratelimited_comes_back_at_once_with_slacks_retry_after(slack: SlackServer) -> None:
    slack.rate_limit(retry_after=7)

    started = time.monotonic()
    delivery = bot(slack).send(notification(), {})

    # No retry handler sleeping inside send(): the outbox waits, not the worker.
    assert time.monotonic() - started < 2
    assert (delivery.outcome, delivery.retry_after) == (Outcome.RETRY, 7.0)
    assert "ratelimited" in delivery.detail
    assert len(slack.requests) == 1
    assert slack.messages == []


@pytest.mark.parametrize(("setup", "error"), [
    ({"token": "xoxb-wrong"}, "invalid_auth"),
    ({"channel": "#nope"}, "channel_not_found"),
    ({"channel": "#leads"}, "not_in_channel"),
])
def test_refusals_are_permanent(slack: SlackServer, setup: dict[str, Any], error: str) -> None:
    delivery = bot(slack, **setup).send(notification(), {})

    assert delivery.outcome is Outcome.PERMANENT
    assert error in delivery.detail
    assert TOKEN not in delivery.detail and "xoxb-wrong" not in delivery.detail


def test_invalid_blocks_are_permanent(slack: SlackServer) -> None:
    slack.api_error("invalid_blocks")

    delivery = bot(slack).send(notification(), {})

    assert (delivery.outcome, "invalid_blocks" in delivery.detail) == (Outcome.PERMANENT, True)


@pytest.mark.parametrize("reply", [
    Reply(503, "<html>Service Unavailable</html>"),
    Reply(500, {"ok": False, "error": "fatal_error"}),
    Reply(200, {"ok": False, "error": "internal_error"}),
])
def test_slack_side_failures_are_retried(slack: SlackServer, reply: Reply) -> None:
    slack.script(reply)

    assert bot(slack).send(notification(), {}).outcome is Outcome.RETRY


def test_a_timeout_is_retried(slack: SlackServer) -> None:
    slack.script(Reply(200, {"ok": True}, delay=2.5))

    delivery = bot(slack, timeout=1).send(notification(), {})

    assert delivery.outcome is Outcome.RETRY
    assert TOKEN not in delivery.detail


def test_an_unreachable_slack_is_retried() -> None:
    settings = SlackReceiver(token=TOKEN, channel="#oncall",  # type: ignore[arg-type]
                             base_url=f"http://127.0.0.1:{free_port()}/api/", timeout=2)

    delivery = SlackNotifier(settings).send(notification(), {})

    assert delivery.outcome is Outcome.RETRY
    assert TOKEN not in delivery.detail


def test_mrkdwn_in_annotations_is_escaped(slack: SlackServer) -> None:
    sneaky = alert(annotations={"summary": "<!channel> look & <https://evil|click>"})

    bot(slack).send(notification(sneaky), {})

    about = slack.messages[0].all_blocks[1]
    assert about["text"]["text"] == "&lt;!channel&gt; look &amp; &lt;https://evil|click&gt;"


def test_incoming_webhook_posts_a_new_message_for_every_notification(
        slack: SlackServer) -> None:
    hook = webhook(slack.webhook_url)
    firing = alert()

    first = hook.send(notification(firing), {})
    second = hook.send(notification(resolved(firing), action=Action.RESOLVE, id="n-2"),
                       first.receipt)

    assert (first.outcome, second.outcome) == (Outcome.ACCEPTED, Outcome.ACCEPTED)
    assert first.receipt == {}
    posted = slack.webhook_messages
    assert [p["text"] for p in posted] == [
        "[HIGH] PostgresConnectionsHigh (target=main): Firing (1 alert)",
        "[HIGH] PostgresConnectionsHigh (target=main): Resolved",
    ]
    assert [p["attachments"][0]["color"] for p in posted] == ["danger", "good"]
    assert posted[0]["attachments"][0]["blocks"][0]["type"] == "header"
    assert slack.messages == []


def test_incoming_webhook_429_is_retried_and_404_is_permanent(slack: SlackServer) -> None:
    slack.script(Reply(429, "rate_limited", {"Retry-After": "12"}))
    hook = webhook(slack.webhook_url)

    limited = hook.send(notification(), {})
    missing = webhook(slack.webhook_url + "x").send(notification(), {})

    assert (limited.outcome, limited.retry_after) == (Outcome.RETRY, 12.0)
    assert missing.outcome is Outcome.PERMANENT
    assert "piggywatchwebhooksecret" not in limited.detail + missing.detail


def test_build_notifier_gives_each_receiver_its_channel(slack: SlackServer) -> None:
    receiver = Receiver.model_validate(
        {"name": "oncall-slack", "slack": {"token": TOKEN, "channel": "#oncall",
                                           "base_url": slack.url}})

    notifier = build_notifier(receiver, external_url=EXTERNAL_URL)

    assert isinstance(notifier, SlackNotifier)
    assert notifier.send(notification(external_url=""), {}).outcome is Outcome.ACCEPTED
    buttons = slack.messages[0].all_blocks[-1]["elements"]
    assert buttons[-1]["url"] == EXTERNAL_URL


def test_unused_channels_are_never_imported() -> None:
    # Memory matters: a daemon without a Slack bot must not load slack-sdk.
    code = """
import sys
from piggywatch.alerting.channels import build_notifier
from piggywatch.alerting.settings import Receiver
for spec in ({"pagerduty": {"routing_key": "k"}},
             {"email": {"to": ["a@example.com"], "from": "p@example.com",
                        "smarthost": "localhost:25"}},
             {"webhook": {"url": "http://127.0.0.1:9/hook"}},
             {"slack": {"webhook_url": "http://127.0.0.1:9/services/x"}}):
    build_notifier(Receiver.model_validate({"name": "r", **spec}))
print(sorted(m for m in sys.modules if m.startswith("slack_sdk")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


# Label values that Slack's mrkdwn would turn into a mention of everyone, a disguised link
# and (were it HTML) a script.
HOSTILE_LABELS = {"link": "<https://x|y>", "html": "<script>"}


def hostile_alert() -> Any:
    return alert(target="<!channel>", extra_labels=HOSTILE_LABELS,
                 annotations={"summary": "db <https://x|y> & <script>"})


def test_label_values_are_escaped_in_the_fallback_text_and_the_blocks(
        slack: SlackServer) -> None:
    first = bot(slack).send(notification(hostile_alert()), {})
    acked = bot(slack).send(notification(hostile_alert(), action=Action.ACKNOWLEDGE,
                                         acked_by="<!here>", acked_at=T0 + 400, id="n-2"),
                            first.receipt)

    assert (first.outcome, acked.outcome) == (Outcome.ACCEPTED, Outcome.ACCEPTED)
    [message, reply] = slack.messages
    assert message.text == ("[HIGH] PostgresConnectionsHigh (target=&lt;!channel&gt;): "
                            "Acknowledged by &lt;!here&gt; at 2026-01-01T00:06:40.000Z")
    assert message.versions[0]["text"] == ("[HIGH] PostgresConnectionsHigh "
                                           "(target=&lt;!channel&gt;): Firing (1 alert)")
    assert reply.text == (":eyes: Acknowledged by &lt;!here&gt; <!date^1767226000^"
                          "{date_short_pretty} {time}|2026-01-01T00:06:40.000Z>")
    assert message.attachments is not None
    blocks = message.attachments[0]["blocks"]
    assert blocks[0] == {"type": "header", "text": {
        "type": "plain_text", "emoji": True,  # plain text: shown as written, never parsed
        "text": ":eyes: PostgresConnectionsHigh (target=<!channel>)"}}
    assert blocks[1]["text"]["text"] == "db &lt;https://x|y&gt; &amp; &lt;script&gt;"
    assert fields(blocks)["*Target*"] == "&lt;!channel&gt;"
    assert fields(blocks)["*Status*"] == ("Acknowledged by &lt;!here&gt; at "
                                          "2026-01-01T00:06:40.000Z")
    assert blocks[3]["elements"][0]["text"] == (
        "`alertname=PostgresConnectionsHigh`  `html=&lt;script&gt;`  "
        "`link=&lt;https://x|y&gt;`  `severity=high`  `target=&lt;!channel&gt;`")
    # Raw only in the header, which is plain_text.
    for request in slack.requests:
        body = request.json()
        header = body.get("attachments", [{}])[0].get("blocks", [{}])[0]
        rest = json.dumps({**body, "attachments": []}) + json.dumps(
            body.get("attachments", [{}])[0].get("blocks", [])[1:])
        assert header.get("type") in (None, "header")
        for raw in ("<!channel>", "<!here>", "<https://x|y>", "<script>"):
            assert raw not in rest, (raw, rest)


def test_incoming_webhook_fallback_text_is_escaped(slack: SlackServer) -> None:
    delivery = webhook(slack.webhook_url).send(notification(hostile_alert()), {})

    assert delivery.outcome is Outcome.ACCEPTED
    [posted] = slack.webhook_messages
    assert posted["text"] == ("[HIGH] PostgresConnectionsHigh (target=&lt;!channel&gt;): "
                              "Firing (1 alert)")
