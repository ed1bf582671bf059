"""Edge functions: invocations, errors and latency from the app's edge-function logs.

Two sources feed one collector: a log table in the monitored database (read here, with
every aggregate computed by PostgreSQL) and the Supabase Management API's analytics logs
(``http_source``). Both are read incrementally from a durable watermark.

How the watermark counts every row exactly once, also when rows arrive out of order:

* ``settled_before`` (S) is kept in the state database with the *settled totals*: the
  aggregates of every row whose ``created_at`` is before S. Rows before S are never read again.
* Each cycle reads the tail ``created_at >= S`` once, split at S' = now - lateness: the part
  before S' is added to the settled totals and S moves to S' (one transaction); the
  part after S' is *pending* and is re-read, from scratch, next cycle.
* Exported counters are settled totals + pending aggregates. The pending part is recomputed
  rather than accumulated, so a late row landing in it is counted once, and a restart
  (new process, same state) loses and repeats nothing: it resumes from S.

A row inserted more than ``lateness`` after its ``created_at`` may fall before S and is not
counted: that is the price of never re-reading settled rows, and why lateness is a setting.
No per-row ids are stored, so the state stays a few rows per function whatever the volume.

Replicas sharing the state: only the leader persists (``EdgeStateDB(may_write=...)``); a
standby counts in memory from where the state was when it started. Saving moves S only
from the value the saver last saw, so a replica that was not the one saving (a standby just
promoted) finds S elsewhere and continues from the stored S and totals instead.
"""

from piggywatch.collectors.base import SourceContext, SourceJob
from piggywatch.collectors.edge_functions.collector import (
    SPECS,
    EdgeFunctionsCollector,
    build_edge_functions_collector,
)
from piggywatch.collectors.edge_functions.model import (
    EdgeFunctionsConfig,
    EdgeHttpSourceConfig,
    EdgeSqlSourceConfig,
    Ranker,
    Reading,
    Totals,
)
from piggywatch.collectors.edge_functions.sql_source import SqlEdgeSource
from piggywatch.collectors.edge_functions.watermark import EdgeStateDB

__all__ = [
    "SPECS", "EdgeFunctionsCollector", "EdgeFunctionsConfig", "EdgeHttpSourceConfig",
    "EdgeSqlSourceConfig", "EdgeStateDB", "Ranker", "Reading", "SqlEdgeSource", "Totals",
    "build", "build_edge_functions_collector",
]


def build(config: EdgeFunctionsConfig, context: SourceContext) -> list[SourceJob]:
    """The source's one collector; its watermark lives in the state database, so a restart
    neither recounts nor skips. Only the leader writes it; a standby counts in memory."""
    bound = context.targets[config.sql.target] if config.sql is not None else None
    collector = build_edge_functions_collector(
        config, EdgeStateDB(context.state, may_write=context.may_write),
        targets=dict(context.targets))
    return [(bound.name if bound else "edge_functions", bound, collector, config.interval)]
