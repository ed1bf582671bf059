"""/readyz of the real daemon process: 503 naming the target until its first sampling attempt
has ended (a target whose connection hangs keeps it there), then 200; a target that cannot
be reached at all is ready once its first attempt has failed (readiness says "has tried",
so an orchestrator does not restart the sidecar of a database that is down)."""

from __future__ import annotations

from pathlib import Path

from piggywatch.demo.cluster import ThrowawayCluster
from tests.support.daemon_process import DaemonProcess
from tests.support.metrics import value
from tests.support.ports import free_port
from tests.support.tcp_proxy import FreezableProxy

WAITING = "waiting for the first sample of: main"


def config(tmp_path: Path, dsn: str, connect_timeout: str = "30s") -> Path:
    path = tmp_path / "piggywatch.yaml"
    path.write_text(f"""\
targets:
  - name: main
    dsn: "{dsn}"
    connect_timeout: {connect_timeout}
    collectors:
      connections: {{interval: 1s}}
      database: {{enabled: false}}
      statements: {{enabled: false}}
      tables: {{enabled: false}}
state: sqlite:///{tmp_path}/state.db
""")
    return path


def test_readyz_is_503_while_the_first_sample_hangs_then_200(
        pg_cluster: ThrowawayCluster, tmp_path: Path) -> None:
    with FreezableProxy(("127.0.0.1", pg_cluster.port)) as proxy:
        proxy.freeze()  # the target's connection hangs: no byte moves either way
        dsn = pg_cluster.dsn().replace(f":{pg_cluster.port}/", f":{proxy.port}/")
        assert str(proxy.port) in dsn
        with DaemonProcess(config(tmp_path, dsn), tmp_path, wait_ready=False) as daemon:
            first = daemon.get("/readyz")
            assert (first.status_code, first.text) == (503, WAITING + "\n")
            assert daemon.get("/healthz").status_code == 200  # alive, only not ready
            proxy.thaw()
            daemon.wait_until(lambda: daemon.get("/readyz").status_code == 200, 30,
                              "/readyz 200 once the first sample went through")
            assert daemon.get("/readyz").text == "ready\n"
            assert value(daemon.metrics(), "pg_up", target="main") == 1


def test_an_unreachable_target_is_ready_after_its_first_failed_attempt(
        tmp_path: Path) -> None:
    dsn = f"postgresql://piggywatch@127.0.0.1:{free_port()}/postgres"  # nothing listens
    with DaemonProcess(config(tmp_path, dsn, "2s"), tmp_path, wait_ready=False) as daemon:
        daemon.wait_until(lambda: daemon.get("/readyz").status_code == 200, 20,
                          "/readyz 200 after the first (failed) attempt")
        assert value(daemon.metrics(), "pg_up", target="main") == 0
