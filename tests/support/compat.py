"""postgres_exporter (Debian's package) and PiggyWatch's collectors side by side on one database."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.config import TargetConfig
from piggywatch.exporter import build_registry, render_text
from piggywatch.jobs import CollectorJob, build_collectors
from piggywatch.selfmetrics import SelfMetrics
from piggywatch.store import MemoryStore
from tests.support.ports import free_port
from tests.support.processes import stop_process

POSTGRES_EXPORTER = shutil.which("prometheus-postgres-exporter") or (
    "/usr/bin/prometheus-postgres-exporter"
    if Path("/usr/bin/prometheus-postgres-exporter").exists() else None)
# Families of the exporter itself, not of the database.
NOT_OF_THE_DATABASE = re.compile(r"^(go_|promhttp_|process_|postgres_exporter_build_info$)")
_LINE = re.compile(r'^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Exposition:
    """A parsed text exposition: types by family, and every series' labels."""

    types: dict[str, str] = field(default_factory=dict)
    series: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    timestamps: dict[str, list[int | None]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Exposition:
        found = cls()
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                found.types[name] = kind
            elif line and not line.startswith("#"):
                match = _LINE.match(line)
                assert match, f"unparsable exposition line: {line}"
                name = match[1]
                labels = dict(_LABEL.findall(match[3] or ""))
                found.series.setdefault(name, []).append(labels)
                stamp = match[5]
                found.timestamps.setdefault(name, []).append(int(stamp) if stamp else None)
        return found

    def families(self) -> set[str]:
        """Families with at least one series, the exporter's own left out."""
        return {name for name in self.series if not NOT_OF_THE_DATABASE.match(name)}


@contextmanager
def postgres_exporter(dsn: str) -> Iterator[str]:
    """postgres_exporter on a free port, reading ``dsn``; its /metrics URL."""
    assert POSTGRES_EXPORTER is not None
    port = free_port()
    env = {**os.environ, "DATA_SOURCE_NAME": dsn + ("&" if "?" in dsn else "?")
           + "sslmode=disable"}
    proc = subprocess.Popen([POSTGRES_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url, timeout=5).is_success:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "postgres_exporter exited"
            assert time.monotonic() < deadline, "postgres_exporter did not serve /metrics"
            time.sleep(0.2)
        yield url
    finally:
        stop_process(proc, 10)


def piggywatch_jobs(dsn: str, store: MemoryStore, *, name: str = "main",
                    **collectors: object) -> tuple[PostgresTarget, list[CollectorJob]]:
    """The jobs the daemon would run for one target (statements and tables left out)."""
    config = TargetConfig.model_validate({"name": name, "dsn": dsn, "collectors": {
        "statements": {"enabled": False}, "tables": {"enabled": False}, **collectors}})
    target = PostgresTarget(name, dsn)
    self_metrics = SelfMetrics(store)
    jobs = []
    for collector, interval in build_collectors(config, target):
        store.register(collector.specs())
        self_metrics.add_job(name, collector.name)
        jobs.append(CollectorJob(name, target, collector, interval, store, self_metrics))
    return target, jobs


def piggywatch_exposition(dsn: str) -> str:
    """One cycle of every job, exposed as the daemon's /metrics would show it."""
    store = MemoryStore()
    target, jobs = piggywatch_jobs(dsn, store)
    try:
        for job in jobs:
            job.run()
    finally:
        target.close()
    return render_text(build_registry(store, process_metrics=False)).decode()
