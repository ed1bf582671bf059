"""Acknowledgements from PagerDuty (webhooks v3 or polling), Slack buttons (request URL or
Socket Mode) and signed mail links."""

from piggywatch.ack.http import HOOK_PREFIXES, HookEndpoints
from piggywatch.ack.links import AckLinks, LinkClaim, LinkError
from piggywatch.ack.service import SPECS, STORE_KEY, AckService, HookAnswer

__all__ = ["HOOK_PREFIXES", "SPECS", "STORE_KEY", "AckLinks", "AckService", "HookAnswer",
           "HookEndpoints", "LinkClaim", "LinkError"]
