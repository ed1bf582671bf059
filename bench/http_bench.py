"""The HTTP server under 150 slow clients: /metrics latency, RSS and threads of the serving
process, for PiggyWatch's server and, for comparison, the thread-per-connection wsgiref
server it replaced (prometheus-client's ThreadingWSGIServer).

Each server runs in its own process with the daemon's endpoints over a store of
``--series`` series; slow clients send half a request and stall. Prints figures only.

    python bench/http_bench.py [--slow 150] [--scrapes 50] [--series 2000] [--tls]
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HALF_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def serve(kind: str, port_file: Path, series: int, tls: list[str]) -> None:
    """The child: one server on a free port, which it writes to ``port_file``."""
    from piggywatch.api import DaemonApi
    from piggywatch.exporter import build_registry
    from piggywatch.server import Access, Endpoints, HttpServer
    from piggywatch.store import MemoryStore, MetricKind, MetricSpec, Sample, labels_of

    store = MemoryStore()
    store.register([MetricSpec("bench_value", MetricKind.GAUGE, "bench")])
    now = time.time()
    store.publish("bench", [Sample("bench_value", labels_of(n=str(i)), float(i), now)
                            for i in range(series)], now)
    app = Endpoints(build_registry(store), ready=lambda: (True, "ready"), statements=dict,
                    alerting=DaemonApi(None, None), access=Access(api_token="x" * 20))
    if kind == "piggywatch":
        server = HttpServer(app, "127.0.0.1", 0, tls=(tls[0], tls[1]) if tls else None)
        server.start()
        port = server.port
    else:
        import threading
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        from prometheus_client.exposition import ThreadingWSGIServer

        class Quiet(WSGIRequestHandler):
            timeout = 30.0

            def log_message(self, format: str, *args: object) -> None:
                pass

        old = make_server("127.0.0.1", 0, app, ThreadingWSGIServer, handler_class=Quiet)
        threading.Thread(target=old.serve_forever, daemon=True).start()
        port = old.server_address[1]
    port_file.write_text(str(port))
    while True:
        time.sleep(3600)


def status(pid: int) -> tuple[float, int]:
    """RSS (MB) and thread count of a process."""
    rss, threads = 0.0, 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def scrape_latencies(client: httpx.Client, url: str, count: int) -> list[float]:
    took = []
    for _ in range(count):
        began = time.perf_counter()
        response = client.get(url + "/metrics")
        took.append(time.perf_counter() - began)
        if response.status_code != 200:
            print(f"  /metrics answered {response.status_code}")
    return took


def figures(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return (f"p50 {statistics.median(ordered) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
            f"max {ordered[-1] * 1000:.1f} ms")


def measure(kind: str, args: argparse.Namespace, tmp: Path, tls: list[str]) -> None:
    port_file = tmp / f"{kind}.port"
    proc = subprocess.Popen([sys.executable, __file__, "--child", kind, str(port_file),
                             str(args.series), *tls])
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"{kind}: the server did not start")
            time.sleep(0.05)
        port = int(port_file.read_text())
        scheme = "https" if tls else "http"
        url = f"{scheme}://127.0.0.1:{port}"
        context: ssl.SSLContext | None = None
        if tls:
            context = ssl.create_default_context(cafile=tls[0])
        with httpx.Client(verify=context or True, timeout=30) as client:
            scrape_latencies(client, url, 3)
            rss_idle, threads_idle = status(proc.pid)
            quiet = scrape_latencies(client, url, args.scrapes)
            rss_scraped, _ = status(proc.pid)
            slow = []
            began = time.perf_counter()
            for _ in range(args.slow):
                raw = socket.create_connection(("127.0.0.1", port), timeout=30)
                sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if context \
                    else raw
                sock.sendall(HALF_REQUEST)
                slow.append(sock)
            opened = time.perf_counter() - began
            time.sleep(0.5)
            rss_slow, threads_slow = status(proc.pid)
            loaded = scrape_latencies(client, url, args.scrapes)
            for sock in slow:
                sock.close()
        print(f"{kind} ({scheme}, {args.series} series):")
        print(f"  idle: RSS {rss_idle:.1f} MB, {threads_idle} threads")
        print(f"  /metrics alone:                {figures(quiet)}; RSS after "
              f"{rss_scraped:.1f} MB")
        print(f"  {args.slow} slow clients opened in {opened:.2f} s: RSS {rss_slow:.1f} MB "
              f"(+{rss_slow - rss_scraped:.1f}), {threads_slow} threads")
        print(f"  /metrics under {args.slow} slow clients: {figures(loaded)}")
    finally:
        proc.kill()
        proc.wait()


def import_cost() -> None:
    """RSS of a process that imports the server module, against one that does not."""
    base = ("import resource, prometheus_client, wsgiref.simple_server, selectors, ssl, json;"
            " {extra} print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    without = subprocess.run([sys.executable, "-c", base.format(extra="")],
                             capture_output=True, text=True, check=True).stdout
    with_server = subprocess.run([sys.executable, "-c", base.format(
        extra="import piggywatch.http_server;")], capture_output=True, text=True,
        check=True).stdout
    print(f"import piggywatch.http_server adds {(int(with_server) - int(without)) / 1024:.2f}"
          f" MB max RSS (stdlib only: selectors, ssl, wsgiref)")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        serve(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5:])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slow", type=int, default=150, help="slow clients")
    parser.add_argument("--scrapes", type=int, default=50, help="scrapes measured")
    parser.add_argument("--series", type=int, default=2000, help="series in /metrics")
    parser.add_argument("--tls", action="store_true", help="serve over TLS")
    parser.add_argument("--quick", action="store_true",
                        help="a run of seconds, budgets not asserted (CI)")
    args = parser.parse_args()
    if args.quick:
        args.slow, args.scrapes, args.series = 10, 5, 200
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        tls: list[str] = []
        if args.tls:
            from tests.support.servers.tls import make_certificate

            cert = make_certificate(tmp / "tls")
            tls = [str(cert.cert_path), str(cert.key_path)]
        import_cost()
        # The replaced server is compared over plain HTTP only.
        for kind in ("piggywatch",) if args.tls else ("piggywatch", "wsgiref-threads"):
            measure(kind, args, tmp, tls)


if __name__ == "__main__":
    main()
