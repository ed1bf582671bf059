"""Acknowledging through either replica: a load balancer in front of two daemons hands
PagerDuty's webhooks and a mail link's page to whichever it picks, and a standby passes
them, unchanged, to the leader, which holds the incidents they act on."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import psycopg
import pytest

from piggywatch.demo.cluster import ThrowawayCluster
from tests.support.daemon_process import DaemonProcess
from tests.support.servers.pagerduty_hooks import PagerDutyWebhookSender, incident_delivery
from tests.test_ack_e2e import PD_SECRET, SECRETS, Channels, ack_config, level_1
from tests.test_delivery_e2e import load
from tests.test_ha import leader_of, shared_state, stop_cleanly


@pytest.fixture
def channels() -> Iterator[Channels]:
    with ExitStack() as stack:
        yield Channels(stack)


def test_a_standby_hands_acknowledgements_to_the_leader(
        pg_cluster: ThrowawayCluster, state_cluster: ThrowawayCluster, channels: Channels,
        tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    config = shared_state(ack_config(tmp_path / "a", channels, pg_cluster), state_cluster)
    connections: list[psycopg.Connection] = []
    try:
        with DaemonProcess(config, tmp_path / "a", SECRETS) as a, \
                DaemonProcess(config, tmp_path / "b", SECRETS) as b:
            leader, standby = leader_of(a, b)
            connections = load(pg_cluster)
            dedup_key = level_1(channels)
            # The mail's link, opened through the standby: the leader's page for it.
            text = channels.smtp.mails[0].message.get_body(("plain",)).get_content()
            link = re.search(r"Acknowledge: http://piggywatch\.test(/ack/\S+)", text)
            assert link is not None, text
            page = httpx.get(standby.url + link.group(1), timeout=10)
            assert page.status_code == 200 and "oncall@example.com" in page.text, page.text
            assert page.headers["Content-Type"].startswith("text/html")
            # A webhook with a wrong signature is refused, by the leader, as it refuses it.
            forged = PagerDutyWebhookSender(standby.url + "/hooks/pagerduty",
                                            ["not-the-secret-0123456789abcdef"])
            delivery = incident_delivery("incident.acknowledged", dedup_key,
                                         occurred_at=time.time(), agent="Jane Oncall")
            assert forged.send(delivery).status_code == 401
            # PagerDuty's acknowledgement, delivered to the standby, is applied.
            sender = PagerDutyWebhookSender(standby.url + "/hooks/pagerduty", [PD_SECRET])
            answer = sender.send(delivery)
            assert answer.status_code == 200 and answer.json()["status"] == "applied", \
                answer.text
            [alert] = leader.api("GET", "/api/v1/alerts").json()["data"]["alerts"]
            assert (alert["ack"]["source"], alert["ack"]["by"]) == ("pagerduty", "Jane Oncall")
            stop_cleanly(a, b)
    finally:
        for conn in connections:
            conn.close()
