"""A real Prometheus server (Debian package ``prometheus``) for tests: started on a free
loopback port with a given configuration, stopped at the end."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.support.ports import free_port
from tests.support.processes import stop_process


@contextmanager
def running_prometheus(home: Path, config: dict[str, Any]
                       ) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    """Prometheus with ``config`` (its prometheus.yml as a mapping), data in ``home``:
    (its URL, the process, its log file). The caller waits for what it needs."""
    path = home / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    listen = f"127.0.0.1:{free_port()}"
    log = home / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["prometheus", f"--config.file={path}",
                                 f"--web.listen-address={listen}",
                                 f"--storage.tsdb.path={home / 'data'}"],
                                stdout=out, stderr=subprocess.STDOUT, text=True, cwd=home)
    try:
        yield f"http://{listen}", proc, log
    finally:
        stop_process(proc, 15)
