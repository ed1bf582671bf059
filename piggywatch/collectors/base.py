"""The collector interface."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from piggywatch.store import Changes, MetricSpec, Sample

if TYPE_CHECKING:
    from piggywatch.collectors.postgres.target import PostgresTarget
    from piggywatch.state import StateStore


class CollectorError(Exception):
    """A sampling cycle failed for a reason worth counting and reporting.

    ``reason`` is a short, stable word used as a metric label: connect, query, timeout,
    busy, setup (a prerequisite such as an extension is missing), permission (the monitoring
    role lacks a grant: the figures are not visible to it).
    """

    def __init__(self, reason: str, message: str, samples: Sequence[Sample] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        # What is still true despite the failure (e.g. redis_up 0): published, not dropped.
        self.samples = tuple(samples)


class Collector(Protocol):
    """Samples one source. ``collect`` raises CollectorError for expected failures."""

    @property
    def name(self) -> str:
        """Short stable name, used as the ``collector`` label."""
        ...

    def specs(self) -> Sequence[MetricSpec]:
        """Every metric family this collector may produce."""
        ...

    def collect(self, now: float) -> list[Sample]:
        """Run one sampling cycle; ``now`` is the wall-clock time stamped on the samples."""
        ...


@runtime_checkable
class CollectsChanges(Protocol):
    """A collector that can also tell a cycle as what changed since its previous one.

    For sources of thousands of series of which a few change a cycle (pg_stat_statements at
    top_k 5000): the job and the store then work on those few (``MemoryStore.
    publish_changes``). ``full``: tell everything (the store has nothing to change: first
    cycle, or after a failed one). A series keeps its labels object from cycle to cycle.
    """

    def collect_changes(self, now: float, *, full: bool) -> Changes:
        """Run one sampling cycle, as what changed; stamps every changed sample ``now``."""
        ...


# One report of the HTTP API (GET /api/v1/<name>) for one target, built when asked.
Report = Callable[[], list[dict[str, Any]]]


@runtime_checkable
class ServesReports(Protocol):
    """A collector that also serves API reports (the statements collector: its top
    statements). The daemon gathers them by name, without knowing the collector's class."""

    def reports(self) -> Mapping[str, Report]:
        """The reports this collector serves, by report name."""
        ...


@dataclass(frozen=True)
class SourceContext:
    """What a source's ``build`` may use: the targets by name and the state database."""

    targets: Mapping[str, PostgresTarget]
    state: StateStore
    # Whether this replica may write durable source state (watermarks): the leader only.
    may_write: Callable[[], bool]


# One scheduled collector of a source: (owner, target or None, collector, interval).
SourceJob = tuple[str, "PostgresTarget | None", Collector, float]
