"""/metrics from bytes rendered at publish time: the same exposition as rendering at scrape time.

The reference is prometheus-client's own path: the store read through ``StoreCollector`` into
metric families at scrape time (what /metrics served before the cache), rendered by
``render_text`` on a plain registry and by prometheus-client's ``generate_latest``. Both are
parsed with prometheus-client's parser and compared with what the cached exposition serves.
"""

from __future__ import annotations

import gzip
import math
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from piggywatch.exporter import MetricsApp, StoreCollector, build_registry, render_text
from piggywatch.store import Changes, MemoryStore, MetricKind, MetricSpec, Sample, labels_of
from piggywatch.store.exposition import gzip_member

NAMES = ["pg_fam_a", "pg_fam_b_total", "pg_fam_c_seconds", "piggywatch_fam_d"]
LABEL_KEYS = ["datname", "job", "instance", "server", "user", "a"]
label_values = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]),
                       max_size=8) | st.sampled_from(['"', "\\", "\n", "a\\\"b\nc", ""])
values = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2**53, 2**53).map(float) \
    | st.sampled_from([0.0, -0.0, 1e6, 123456789.0, 1e-7, 5e-324, 1.7976931348623157e308])
timestamps = st.floats(min_value=1.0e9, max_value=2.0e9, allow_nan=False)


@st.composite
def stores(draw: st.DrawFn) -> MemoryStore:
    store = MemoryStore()
    helps = draw(st.lists(st.text(max_size=12) | st.sampled_from(["a\\b", "line\nbreak"]),
                          min_size=len(NAMES), max_size=len(NAMES)))
    kinds = draw(st.lists(st.sampled_from(list(MetricKind)), min_size=len(NAMES),
                          max_size=len(NAMES)))
    store.register(MetricSpec(n, k, h) for n, k, h in zip(NAMES, kinds, helps, strict=True))
    now = draw(timestamps)
    sources = draw(st.lists(st.sampled_from(["s1", "s2", "s3"]), min_size=1, max_size=6))
    for step, source in enumerate(sources):
        if draw(st.booleans()) and step:
            store.clear(source)
            continue
        stamp = now + step
        series = draw(st.dictionaries(
            st.tuples(st.sampled_from(NAMES),
                      st.dictionaries(st.sampled_from(LABEL_KEYS), label_values, max_size=4)
                      .map(lambda d: labels_of(d))),
            st.tuples(values, st.sampled_from([stamp, stamp - 0.0004, stamp - 7.25])),
            max_size=12))
        store.publish(source, [Sample(name, labels, value, ts)
                               for (name, labels), (value, ts) in series.items()],
                      stamp, stamped=draw(st.booleans()))
    return store


def scrape(app: Callable[..., Iterable[bytes]], **environ: Any) -> tuple[dict[str, str], bytes]:
    got: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        got.update(headers)
        got["status"] = status

    body = b"".join(app({"QUERY_STRING": "", **environ}, start_response))
    return got, body


def parsed(text: str) -> tuple[list[tuple[str, tuple[tuple[str, str], ...], str, Any]],
                               dict[str, str]]:
    """Every sample (name, labels, value, timestamp) sorted, and each family's HELP.

    Names are compared without ``_total``: prometheus-client's renderer adds it to a
    counter's TYPE line, and its parser to a counter's samples; ours keep upstream names.
    """
    samples = []
    docs = {}
    for family in text_string_to_metric_families(text):
        if family.documentation:
            docs[family.name.removesuffix("_total")] = family.documentation
        for s in family.samples:
            value = "NaN" if math.isnan(s.value) else repr(s.value)
            labels = tuple(sorted(s.labels.items()))
            samples.append((s.name.removesuffix("_total"), labels, value, s.timestamp))
    return sorted(samples, key=lambda s: (repr(s[:3]), s[3] or 0)), docs


def reference_text(store: MemoryStore) -> str:
    """What /metrics served before the cache: the store read at scrape time."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StoreCollector(store))
    return render_text(registry).decode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stores())
def test_cached_exposition_is_what_rendering_at_scrape_time_gives(store: MemoryStore) -> None:
    before = reference_text(store)
    headers, served = scrape(MetricsApp(build_registry(store, process_metrics=False)))
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    # Byte for byte the renderer it replaces, and the same samples as prometheus-client's own.
    assert served.decode() == before
    ours = parsed(served.decode())
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StoreCollector(store))
    theirs = parsed(generate_latest(registry).decode())
    # prometheus-client truncates a timestamp to the millisecond; the store keeps it rounded.
    assert [s[:3] for s in ours[0]] == [s[:3] for s in theirs[0]]
    for mine, its in zip(ours[0], theirs[0], strict=True):
        assert (mine[3] is None) == (its[3] is None)
        assert mine[3] is None or abs(float(mine[3]) - float(its[3])) <= 0.0011
    assert ours[1] == theirs[1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stores(), st.sets(st.sampled_from(NAMES), min_size=1))
def test_gzip_and_name_filter_serve_the_same_samples(store: MemoryStore,
                                                     names: set[str]) -> None:
    app = MetricsApp(build_registry(store, process_metrics=False))
    _, plain = scrape(app)
    headers, zipped = scrape(app, HTTP_ACCEPT_ENCODING="gzip, deflate")
    app.close()
    assert headers.get("Content-Encoding") == "gzip"
    assert gzip.decompress(zipped) == plain
    # As Prometheus, httpx and curl read it: one member, no trailing data.
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert decoder.decompress(zipped) + decoder.flush() == plain
    assert decoder.eof and not decoder.unused_data
    query = "&".join(f"name[]={n}" for n in sorted(names))
    _, filtered = scrape(app, QUERY_STRING=query)
    short = {n.removesuffix("_total") for n in names}
    wanted = [s for s in parsed(plain.decode())[0] if s[0] in short]
    assert parsed(filtered.decode())[0] == wanted


def test_warm_scrape_serves_the_bytes_rendered_at_publish() -> None:
    store = MemoryStore()
    store.register([MetricSpec("pg_up", MetricKind.GAUGE, "up"),
                    MetricSpec("pg_x_total", MetricKind.COUNTER, "x")])
    store.publish("a", [Sample("pg_up", labels_of(server="s"), 1.0, 100.0)], 100.0, stamped=True)
    store.publish("b", [Sample("pg_x_total", labels_of(), 2.0, 100.0)], 100.0)
    app = MetricsApp(build_registry(store, process_metrics=False))
    first = scrape(app)[1]
    assert first == reference_text(store).encode()
    # Nothing published since: the same bytes, not a new rendering.
    assert store.exposition.body() is store.exposition.body()
    parts, _, _ = store.exposition.gzipped_parts()
    store.publish("b", [Sample("pg_x_total", labels_of(), 3.0, 101.0)], 101.0)
    again, _, _ = store.exposition.gzipped_parts()
    # Only the family that changed was compressed again.
    assert again[0] is parts[0] and again[1] is not parts[1]
    assert scrape(app)[1] == reference_text(store).encode()


def test_gzip_scrapes_never_join_the_whole_text() -> None:
    """Prometheus scrapes with gzip: its answer is made of each family's deflated block, the
    CRC and the length, so the megabytes of the joined text are never held for it."""
    store = MemoryStore()
    store.register([MetricSpec("pg_up", MetricKind.GAUGE, "up"),
                    MetricSpec("pg_x_total", MetricKind.COUNTER, "x")])
    store.publish("a", [Sample("pg_up", labels_of(server="s"), 1.0, 100.0)], 100.0, stamped=True)
    store.publish("b", [Sample("pg_x_total", labels_of(q=str(k)), float(k), 100.0)
                        for k in range(50)], 100.0)
    app = MetricsApp(build_registry(store, process_metrics=False))
    try:
        zipped = scrape(app, HTTP_ACCEPT_ENCODING="gzip")[1]
        assert store.exposition._current()._data is None
        assert gzip.decompress(zipped) == reference_text(store).encode()
        # A scrape without gzip joins it then, and serves the same text.
        assert scrape(app)[1] == gzip.decompress(zipped)
    finally:
        app.close()


def test_a_stamped_changes_source_keeps_only_its_deflated_blocks_between_publishes() -> None:
    """Its every line ends in the publish time, so no later version reuses its chunks: once
    deflated (and counted into the CRC) their joined text is let go, and a scrape without
    gzip joins it again, the same."""
    store = MemoryStore()
    store.register([MetricSpec("pg_x_total", MetricKind.COUNTER, "x")])
    series = [labels_of(queryid=str(k)) for k in range(40)]
    store.publish_changes("s", Changes([Sample("pg_x_total", labels, 1.0, 100.0)
                                        for labels in series], []), 100.0, stamped=True,
                          full=True)
    store.publish_changes("s", Changes([Sample("pg_x_total", series[3], 2.0, 102.0)], []),
                          102.0, stamped=True)
    parts, crc, size = store.exposition.gzipped_parts()
    held = [part for family in store.exposition._current().families for part in family.parts
            if not isinstance(part, bytes)]
    assert held and all(part._data is None for part in held)  # type: ignore[union-attr]
    text = gzip.decompress(gzip_member(parts, crc, size))
    assert text == store.exposition.body() == reference_text(store).encode()
    assert b'pg_x_total{queryid="3"} 2.0 102000\n' in text


def test_scrape_answers_while_a_publish_holds_the_store() -> None:
    store = MemoryStore()
    store.register([MetricSpec("pg_up", MetricKind.GAUGE, "up")])
    store.publish("a", [Sample("pg_up", labels_of(), 1.0, 100.0)], 100.0)
    app = MetricsApp(build_registry(store, process_metrics=False))
    answered = threading.Event()

    def scrape_in_thread() -> None:
        scrape(app)
        answered.set()

    with store._lock:  # what a publish of thousands of series holds for milliseconds
        thread = threading.Thread(target=scrape_in_thread)
        thread.start()
        assert answered.wait(5), "the scrape waited for the store's lock"
    thread.join()


def test_changed_families_are_compressed_when_published_while_gzip_scrapes_come() -> None:
    store = MemoryStore()
    store.register([MetricSpec("pg_up", MetricKind.GAUGE, "up"),
                    MetricSpec("pg_x_total", MetricKind.COUNTER, "x")])
    store.publish("a", [Sample("pg_up", labels_of(server="s"), 1.0, 100.0)], 100.0, stamped=True)
    app = MetricsApp(build_registry(store, process_metrics=False))
    # Without a gzip scrape nothing is compressed ahead.
    scrape(app)
    store.publish("b", [Sample("pg_x_total", labels_of(), 2.0, 100.0)], 100.0)
    time.sleep(0.2)
    assert not store.exposition.compressed()
    try:
        scrape(app, HTTP_ACCEPT_ENCODING="gzip")
        for value in (3.0, 4.0):
            store.publish("b", [Sample("pg_x_total", labels_of(), value, 101.0)], 101.0)
            deadline = time.monotonic() + 5
            while not store.exposition.compressed() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert store.exposition.compressed(), "the published family was not compressed"
            zipped = scrape(app, HTTP_ACCEPT_ENCODING="gzip")[1]
            assert gzip.decompress(zipped) == reference_text(store).encode()
            assert f"pg_x_total {value}".encode() in gzip.decompress(zipped)
    finally:
        app.close()
    store.publish("b", [Sample("pg_x_total", labels_of(), 5.0, 102.0)], 102.0)
    time.sleep(0.2)
    assert not store.exposition.compressed()  # closed: no thread compresses any more


def test_a_family_a_changes_publish_left_alone_is_not_compressed_again() -> None:
    store = MemoryStore()
    store.register([MetricSpec("pg_a", MetricKind.GAUGE, "a"),
                    MetricSpec("pg_b", MetricKind.GAUGE, "b")])
    series = [Sample(name, labels_of(i=str(i)), float(i), 100.0)
              for name in ("pg_a", "pg_b") for i in range(50)]
    store.publish_changes("s", Changes(series, []), 100.0, full=True)
    parts, _, _ = store.exposition.gzipped_parts()
    store.publish_changes("s", Changes([Sample("pg_b", labels_of(i="3"), 7.0, 101.0)], []),
                          101.0)
    again, _, _ = store.exposition.gzipped_parts()
    assert again[0] is parts[0] and again[1] is not parts[1]
    assert gzip.decompress(gzip_member(again, *store.exposition.gzipped_parts()[1:])) \
        == reference_text(store).encode()


def test_scrapes_of_every_kind_racing_a_stamped_changes_source_read_whole_expositions() -> None:
    """gzip scrapes (which let joined chunks go), plain and by-name scrapes, all in threads
    switching every microsecond while a stamped changes source publishes: each answer is one
    publish's every line once, and each gzip member's CRC and length hold (gzip checks them)."""
    names, count = ["pg_a", "pg_b"], 300
    store = MemoryStore(retention=600.0)
    store.register([MetricSpec(name, MetricKind.GAUGE, "h") for name in names])
    labels = [(("queryid", str(q)),) for q in range(count)]
    now = 1_700_000_000.0
    store.publish_changes("s", Changes([Sample(name, lab, 1.0, now) for name in names
                                        for lab in labels], []), now, stamped=True, full=True)

    def whole(text: bytes) -> None:
        lines = [line for line in text.decode().splitlines() if not line.startswith("#")]
        assert len({line.rsplit(" ", 2)[0] for line in lines}) == len(lines) == 2 * count
        assert len({line.rsplit(" ", 1)[1] for line in lines}) == 1  # one publish's stamp

    def gzipped() -> None:
        parts, crc, size = store.exposition.gzipped_parts()
        whole(gzip.decompress(gzip_member(parts, crc, size)))

    stop = threading.Event()
    errors: list[BaseException] = []
    scrapes = [0]

    def scraping(scrape: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                while not stop.is_set():
                    scrape()
                    scrapes[0] += 1
            except BaseException as exc:  # reported by the test below
                errors.append(exc)
                stop.set()
        return run

    threads = [threading.Thread(target=scraping(scrape)) for scrape in (
        gzipped, gzipped, lambda: whole(store.exposition.body()),
        lambda: whole(store.exposition.body(set(names))))]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        # A count of publishes and scrapes, not a time: as many on a slow machine as on a fast
        # one (the bound only stops a hung scraper from hanging the suite).
        deadline, k = time.monotonic() + 120.0, 0
        while (k < 5000 or scrapes[0] < 500) and not stop.is_set():
            assert time.monotonic() < deadline, f"{scrapes[0]} scrapes in 120 s"
            k, now = k + 1, now + 1
            store.publish_changes("s", Changes([Sample(names[k % 2], labels[k % count],
                                                       float(k), now)], []), now, stamped=True)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(switch)
    assert not errors, errors[0]
