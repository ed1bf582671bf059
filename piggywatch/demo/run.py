"""``piggywatch demo``: a throwaway PiggyBong database under synthetic load, monitored."""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import sys
from importlib import resources
from pathlib import Path
from types import FrameType

from piggywatch.config_file import ConfigError, load_settings
from piggywatch.demo.cluster import PostgresNotFound, ThrowawayCluster

DEMO_CONFIG = "piggywatch.yaml"
DEMO_MAX_CONNECTIONS = 50


def shipped_rules_dir() -> Path:
    """Where the shipped rule files are: installed in the package, or a source checkout's."""
    spec = importlib.util.find_spec("piggywatch.shipped_rules")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    # An editable install maps only real packages; the files are then in the checkout.
    return Path(__file__).resolve().parents[2] / "rules"


def reachable_address(listen: str) -> str:
    """Where the demo's own probe reaches the daemon: a wildcard listen is on loopback too."""
    from piggywatch.server import split_listen

    host, port = split_listen(listen)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run_demo(listen: str) -> int:
    """Run the demo until Ctrl-C or SIGTERM; remove everything on the way out."""
    from piggywatch.daemon import Daemon, exit_now_if_stuck
    from piggywatch.demo.workload import SyntheticWorkload
    from piggywatch.observability import setup_logging

    setup_logging("INFO", "text" if sys.stderr.isatty() else "json")

    # SIGTERM during start-up must still tear the cluster down, so it raises like Ctrl-C.
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    clean = True
    cluster = ThrowawayCluster(max_connections=DEMO_MAX_CONNECTIONS)
    try:
        try:
            cluster.start()
        except PostgresNotFound as exc:
            # No server binaries, or root with no unprivileged user to run them as.
            print(f"error: {exc}", file=sys.stderr)
            return 1
        # The monitoring role holds only the README's grants (MONITORING_GRANTS).
        cluster.bootstrap_demo()
        dsn = cluster.dsn(dbname="piggybong", user="piggywatch",
                          password=cluster.role_password("piggywatch"))
        config = resources.files("piggywatch.demo").joinpath(DEMO_CONFIG)
        # A throwaway token for a throwaway daemon, shown once so the API can be tried;
        # one set in PIGGYWATCH_API_TOKEN is used and never printed.
        given = os.environ.get("PIGGYWATCH_API_TOKEN", "")
        token = given or secrets.token_urlsafe(24)
        shown = "$PIGGYWATCH_API_TOKEN" if given else token
        env = {**os.environ, "PIGGYWATCH_DEMO_DSN": dsn, "PIGGYWATCH_DEMO_API_TOKEN": token,
               "PIGGYWATCH_DEMO_RULES": str(shipped_rules_dir()),
               "PIGGYWATCH_DEMO_STATE": str(cluster.base_dir / "piggywatch-state.db"),
               "PIGGYWATCH_DEMO_LISTEN": reachable_address(listen)}
        with resources.as_file(config) as path:
            try:
                settings = load_settings(path, env)
            except ConfigError as exc:
                # E.g. a PIGGYWATCH_API_TOKEN too short to be accepted.
                print(f"error: {exc}", file=sys.stderr)
                return 1
        with SyntheticWorkload(cluster.dsn(dbname="piggybong"), workers=2):
            daemon = Daemon(settings, listen=listen, base_dir=cluster.base_dir)
            print(f"PiggyWatch demo: PostgreSQL on {cluster.host}:{cluster.port} "
                  f"(version {cluster.server_major}, {cluster.install.origin} binaries; "
                  f"database piggybong) under synthetic load.\n"
                  f"  metrics:    http://{listen}/metrics\n"
                  f"  statements: http://{listen}/api/v1/statements\n"
                  f"  alerts:     http://{listen}/api/v1/alerts\n"
                  f"  readiness:  http://{listen}/readyz\n"
                  f"  API token:  {shown} (piggywatch alerts --url http://{listen} "
                  f"--token …)\n"
                  f"Press Ctrl-C to stop and remove the database.", flush=True)
            # run_forever installs its own SIGTERM/SIGINT handlers for a clean stop.
            clean = daemon.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.destroy()
    exit_now_if_stuck(clean)
    return 0
