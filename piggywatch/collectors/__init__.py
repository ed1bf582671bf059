"""Collectors: one module per source; each turns one sampling cycle into samples."""

from piggywatch.collectors.base import Collector, CollectorError

__all__ = ["Collector", "CollectorError"]
