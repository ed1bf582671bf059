"""System memory: the container's cgroup v2 limit when it has one, else the host's meminfo.

Used memory is the *working set* (``memory.current`` minus ``inactive_file`` from
``memory.stat``), as Kubernetes and cAdvisor count it: inactive page cache is reclaimed
before the OOM killer acts, so counting it would page people about a healthy container.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from piggywatch.collectors.base import CollectorError, SourceContext, SourceJob
from piggywatch.config_types import Duration
from piggywatch.store import MetricKind, MetricSpec, Sample, labels_of


class SystemMemoryConfig(BaseModel):
    """Memory use of the container (cgroup v2) or the host."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    enabled: bool = True
    """Whether this runs at all."""
    interval: Duration = 30.0
    """How often it is sampled."""

_G = MetricKind.GAUGE
SPECS = (
    MetricSpec("system_memory_usage_ratio", _G, "Used memory / the memory limit"),
    MetricSpec("system_memory_used_bytes", _G,
               "Memory in use: the cgroup's working set, or MemTotal - MemAvailable"),
    MetricSpec("system_memory_limit_bytes", _G,
               "The cgroup's memory.max when set, else the host's MemTotal"),
)


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """Used and limit bytes, and where they came from (``cgroup`` or ``meminfo``)."""

    used: float
    limit: float
    source: str


class SystemMemoryCollector:
    """Memory use of the container (cgroup v2) or, without a limit, of the host.

    The roots are injectable so tests feed a fake cgroup tree and a fake /proc.
    """

    name = "system_memory"

    def __init__(self, *, cgroup_root: Path = Path("/sys/fs/cgroup"),
                 proc_root: Path = Path("/proc")) -> None:
        self._cgroup_root = cgroup_root
        self._proc_root = proc_root

    def specs(self) -> Sequence[MetricSpec]:
        """The metric families of this collector."""
        return SPECS

    def collect(self, now: float) -> list[Sample]:
        """Read the files once; CollectorError("setup") when neither source is readable."""
        reading = self.read()
        labels = labels_of(source=reading.source)
        out = [Sample("system_memory_used_bytes", labels, reading.used, now),
               Sample("system_memory_limit_bytes", labels, reading.limit, now)]
        if reading.limit > 0:
            out.append(Sample("system_memory_usage_ratio", labels,
                              reading.used / reading.limit, now))
        return out

    def read(self) -> MemoryReading:
        """The cgroup reading when this process's cgroup has a limit, else meminfo."""
        return self._read_cgroup() or self._read_meminfo()

    def _own_cgroup(self) -> Path | None:
        """This process's cgroup v2 directory, or None without cgroup v2."""
        candidates = []
        try:
            for line in (self._proc_root / "self" / "cgroup").read_text().splitlines():
                # cgroup v2 has the single line "0::/path"; v1 lines have controllers.
                if line.startswith("0::"):
                    candidates.append(self._cgroup_root / line[3:].strip().lstrip("/"))
        except OSError:
            pass
        # In a container with its own cgroup namespace the path is "/" and the root is the
        # container's cgroup; a host path that is not mounted here falls back to the root.
        candidates.append(self._cgroup_root)
        for directory in candidates:
            if (directory / "memory.current").is_file():
                return directory
        return None

    def _read_cgroup(self) -> MemoryReading | None:
        own = self._own_cgroup()
        if own is None:
            return None
        limit = _nearest_limit(own, self._cgroup_root)
        if limit is None:
            return None  # unlimited: the host's memory is what can run out
        try:
            current = float((own / "memory.current").read_text().strip())
        except (OSError, ValueError):
            return None
        inactive = _stat_field(own / "memory.stat", "inactive_file")
        used = max(current - inactive, 0.0)
        return MemoryReading(used, limit, "cgroup")

    def _read_meminfo(self) -> MemoryReading:
        path = self._proc_root / "meminfo"
        fields: dict[str, float] = {}
        try:
            for line in path.read_text().splitlines():
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    # Values are in kB (really KiB) per proc(5).
                    scale = 1024.0 if parts[-1] == "kB" else 1.0
                    fields[key.strip()] = float(parts[0]) * scale
        except (OSError, ValueError) as exc:
            raise CollectorError("setup", f"cannot read {path}: {exc}") from None
        total = fields.get("MemTotal")
        available = fields.get("MemAvailable")
        if total is None or available is None:
            raise CollectorError("setup", f"{path} has no MemTotal or MemAvailable "
                                          "(Linux 3.14 or later is needed)")
        return MemoryReading(total - available, total, "meminfo")


def _nearest_limit(directory: Path, root: Path) -> float | None:
    """The smallest memory.max of the cgroup and its ancestors up to the root, or None.

    A limit set on a parent (a Kubernetes pod, a systemd slice) binds the child as well.
    """
    limits: list[float] = []
    node = directory
    while True:
        try:
            text = (node / "memory.max").read_text().strip()
        except OSError:
            text = "max"
        if text != "max":
            with contextlib.suppress(ValueError):  # unreadable: as if unlimited
                limits.append(float(text))
        if node == root or root not in node.parents:
            break
        node = node.parent
    return min(limits) if limits else None


def _stat_field(path: Path, name: str) -> float:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return float(value)
    except (OSError, ValueError):
        pass
    return 0.0


def build(config: SystemMemoryConfig, context: SourceContext) -> list[SourceJob]:
    """The one collector, when enabled."""
    return [("system", None, SystemMemoryCollector(), config.interval)] if config.enabled else []
