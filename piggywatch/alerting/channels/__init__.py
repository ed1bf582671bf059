"""Notification channels: one module each, one registry of them (see ``registry.py``)."""

from piggywatch.alerting.channels.base import Channel, ChannelConfig, NotifierContext
from piggywatch.alerting.channels.registry import (
    CHANNELS,
    build_notifier,
    channel_throttles,
    longest_timeout,
)

__all__ = ["CHANNELS", "Channel", "ChannelConfig", "NotifierContext", "build_notifier",
           "channel_throttles", "longest_timeout"]
