"""`piggywatch sample`: one sample of everything, in Prometheus text format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from piggywatch.demo.cluster import ThrowawayCluster
from tests.support.metrics import parse_metrics, value
from tests.support.ports import free_port


def sample(tmp_path: Path, dsn: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "piggywatch.yaml"
    config.write_text(f"targets:\n  - name: main\n    dsn: '{dsn}'\n    connect_timeout: 2s\n")
    return subprocess.run([sys.executable, "-m", "piggywatch", "sample", "--config",
                           str(config)], capture_output=True, text=True, timeout=60)


def test_sample_prints_every_collector_once(pg_cluster: ThrowawayCluster,
                                            tmp_path: Path) -> None:
    result = sample(tmp_path, pg_cluster.dsn(dbname="piggybong", user="piggywatch",
                                             password=pg_cluster.role_password("piggywatch")))
    assert result.returncode == 0, result.stderr
    values = parse_metrics(result.stdout)
    assert value(values, "pg_up", target="main") == 1.0
    names = {name for name, _ in values}
    assert {"pg_stat_activity_count", "pg_stat_database_xact_commit",
            "pg_stat_statements_entries", "pg_table_size_bytes"} <= names


def test_sample_of_an_unreachable_target_exits_1_with_the_reason(tmp_path: Path) -> None:
    result = sample(tmp_path, f"postgresql://piggywatch:hunter2secret@127.0.0.1:{free_port()}/x")
    assert result.returncode == 1
    assert "target main is unreachable: cannot connect:" in result.stderr
    assert value(parse_metrics(result.stdout), "pg_up", target="main") == 0.0
    assert "hunter2secret" not in result.stderr + result.stdout
