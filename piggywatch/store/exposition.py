"""The store's samples in the Prometheus text format (0.0.4), rendered once per publish.

A scrape of a store of 100,000 series must cost about a millisecond per thousand series, and
must never wait for a collector. So each source's samples are rendered to bytes when the
source publishes them (in the publishing thread, before the store's lock is taken), family
by family, and a scrape only joins the bytes of the current snapshots: each family's HELP
and TYPE lines, then its chunk from every source, stamped sources first. The joined body is
cached until the next publish, and so is its gzip form, family by family (see ``Gzipped``).

What is rendered is exactly what prometheus-client's renderer made of the same samples
(tests/test_exposition_cache.py parses both and compares them): labels sorted, values as
Go formats them, timestamps in whole milliseconds. ``job`` and ``instance`` are left out:
they are the labels Prometheus gives the scrape target itself.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from itertools import chain, repeat
from operator import itemgetter
from typing import cast

from prometheus_client.utils import floatToGoString

from piggywatch.store.samples import Changes, Labels, MetricKind, MetricSpec, Sample

# Prometheus's own target labels, which a PostgreSQL target's samples carry (beside
# ``server``, as postgres_exporter's do once scraped) for the rule evaluator: not exposed,
# Prometheus sets its own when it scrapes. A source's own ``instance`` (redis, probes) is.
HIDDEN_LABELS = frozenset({"job", "instance"})
TARGET_MARK = "server"


def exposed_labels(labels: Labels) -> Labels:
    """``labels`` as /metrics shows them: a PostgreSQL target's job and instance hidden."""
    if not any(key == TARGET_MARK for key, _ in labels):
        return labels
    return tuple(pair for pair in labels if pair[0] not in HIDDEN_LABELS)
_TYPES = {MetricKind.COUNTER: "counter", MetricKind.GAUGE: "gauge",
          MetricKind.UNTYPED: "untyped"}
_go_float_slow = cast(Callable[[float], str], floatToGoString)
# id(labels) → (labels, '{label="value",...}') of one source's current series: collectors
# keep a series' labels object from cycle to cycle, so a lookup by identity (checked) saves
# hashing a tuple of pairs per sample.
LabelTexts = dict[int, tuple[Labels, str]]


def go_float(value: float) -> str:
    """``value`` as Go (and prometheus-client) write it: ``1.0``, ``1e+06``, ``+Inf``, ``NaN``."""
    if value.__class__ is not float:
        value = float(value)
    text = repr(value)
    # Python and Go agree below a million, finite values only (inf, nan end in f / n).
    if value >= 1e6 or text[-1] in "fn":
        return _go_float_slow(value)
    return text


def escape(value: str) -> str:
    """A label value as the text format quotes it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def family_header(spec: MetricSpec) -> bytes:
    """The HELP and TYPE lines of a family."""
    doc = spec.help.replace("\\", r"\\").replace("\n", r"\n")
    return (f"# HELP {spec.name} {doc}\n# TYPE {spec.name} {_TYPES[spec.kind]}\n").encode()


def label_text(labels: Labels) -> str:
    """``{label="value",...}``, the exposed labels sorted, or nothing without any."""
    pairs = ",".join(f'{key}="{escape(value)}"' for key, value in sorted(exposed_labels(labels)))
    return f"{{{pairs}}}" if pairs else ""


def render_source(samples: Iterable[Sample], stamped: bool, previous: LabelTexts
                  ) -> tuple[dict[str, bytes], LabelTexts]:
    """One source's samples as text lines, by family in order of first appearance.

    ``previous`` is what the last publish of the source rendered of its labels: a series
    present again costs a lookup, not its labels' formatting. Returns the chunks and this
    publish's label texts (only of the series it has, so the cache never outgrows it).
    """
    lines: dict[str, list[str]] = {}
    texts: LabelTexts = {}
    last_ts: float | None = None
    last_labels: Labels | None = None
    text = stamp = ""
    for sample in samples:
        name, labels = sample.name, sample.labels
        if labels is not last_labels:
            last_labels = labels
            key = id(labels)
            hit = texts.get(key) or previous.get(key)
            if hit is None or hit[0] is not labels:
                hit = (labels, label_text(labels))
            texts[key] = hit
            text = hit[1]
        out = lines.get(name)
        if out is None:
            out = lines[name] = []
        if stamped:
            if sample.timestamp != last_ts:
                last_ts = sample.timestamp
                stamp = f" {round(float(last_ts) * 1000)}\n"
            out.append(f"{name}{text} {go_float(sample.value)}{stamp}")
        else:
            out.append(f"{name}{text} {go_float(sample.value)}\n")
    return {name: utf8("".join(out)) for name, out in lines.items()}, texts


def utf8(text: str) -> bytes:
    """``text`` as UTF-8; half an emoji (a lone surrogate, which a JSON escape can bring
    into a label value) as "?", so that one odd label value never fails the whole source."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


# A raw deflate stream's last block: empty, final. Each family's block before it is
# compressed on its own and ends on a byte boundary (Z_SYNC_FLUSH), so blocks concatenate.
_DEFLATE_END = b"\x03\x00"
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


class _Lines:
    """One family's lines from a source that publishes changes, as each series' labels and
    value text: joined into the chunk, with the family's name, each labels' text (``texts``)
    and the line end, when a scrape first asks (a stamped source's every line ends in the new
    timestamp at every publish, so rendering at publish would be the whole chunk again).

    A series' label text is kept once for all the families it is in (five for a statement),
    not once in each of its lines: 4 MB less at top_k 5000.
    """

    __slots__ = ("_data", "end", "keys", "name", "texts", "values")

    def __init__(self, name: str, keys: tuple[Labels, ...], values: tuple[str, ...],
                 texts: LabelTexts, end: str) -> None:
        self.name = name
        self.keys = keys
        self.values = values
        # Only ever added to while these keys are current (a pruned source gets a new dict).
        self.texts = texts
        self.end = end
        self._data: bytes | None = None

    @property
    def stamped(self) -> bool:
        """Whether its lines end in a publish time: a next publish never reuses it."""
        return self.end != "\n"

    def release(self) -> None:
        """Forget the joined bytes (``data`` joins them again if asked)."""
        self._data = None

    def data(self) -> bytes:
        # Read once: a scrape thread may ``release()`` between a store and a second read.
        data = self._data
        if data is None:
            # Every step in C: name, text, " ", value, end, for each series.
            texts = map(_TEXT, map(self.texts.__getitem__, map(id, self.keys)))
            data = self._data = utf8("".join(chain.from_iterable(zip(
                repeat(self.name), texts, repeat(" "), self.values, repeat(self.end)))))
        return data


# A source's chunk of one family: its bytes, or its lines to join when first scraped.
Chunk = bytes | _Lines
_NAME = itemgetter(0)  # a sample's metric name
_TEXT = itemgetter(1)  # a LabelTexts entry's text


class _Changing:
    """What a source that publishes changes has rendered: each series' value text by family,
    each family's chunk as last handed out, and its label texts."""

    __slots__ = ("chunks", "families", "texts")

    def __init__(self) -> None:
        self.families: dict[str, dict[Labels, str]] = {}
        self.chunks: dict[str, _Lines] = {}
        self.texts: LabelTexts = {}


class _Family:
    """One family's parts at one version (its HELP and TYPE lines, then each source's
    chunk), and their deflated form once asked for."""

    __slots__ = ("deflated", "name", "parts")

    def __init__(self, name: str, parts: tuple[Chunk, ...]) -> None:
        self.name = name
        self.parts = parts
        self.deflated: bytes | None = None

    def pieces(self) -> Iterator[bytes]:
        for part in self.parts:
            yield part if part.__class__ is bytes else cast(_Lines, part).data()

    def same_as(self, other: _Family) -> bool:
        return len(self.parts) == len(other.parts) and all(
            a is b for a, b in zip(self.parts, other.parts, strict=True))

    def release(self) -> None:
        """Forget the joined bytes of chunks no later version reuses, once deflated: a
        changes source stamped at every publish (the statements at top_k 5000: 4 MB)."""
        for part in self.parts:
            if isinstance(part, _Lines) and part.stamped:
                part.release()


class _Body:
    """The exposition at one version of the store: families, and the bytes joined or their
    CRC-32 and length once asked for.

    Prometheus always scrapes with gzip, which needs only each family's deflated block, the
    CRC and the length: the joined bytes (megabytes at top_k 5000) are made only for a scrape
    without it.
    """

    __slots__ = ("_data", "families", "sum", "version")

    def __init__(self, version: int, families: list[_Family]) -> None:
        self.version = version
        self.families = families
        self._data: bytes | None = None
        self.sum: tuple[int, int] | None = None

    def data(self) -> bytes:
        data = self._data
        if data is None:
            data = self._data = b"".join(piece for family in self.families
                                         for piece in family.pieces())
        return data

    def checksum(self) -> tuple[int, int]:
        """The CRC-32 of the joined bytes and their length, without joining (one attribute,
        so that a thread never sees one of the two without the other)."""
        found = self.sum
        if found is None:
            crc = size = 0
            for family in self.families:
                for piece in family.pieces():
                    crc = zlib.crc32(piece, crc)
                    size += len(piece)
            found = self.sum = (crc, size)
        return found


class Exposition:
    """Rendered chunks of every source's current snapshot, joined and cached for scrapes.

    Its own lock is held only to swap references, so a scrape never waits for a publish.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._headers: dict[str, bytes] = {}
        # source → (stamped, {family: chunk}), in the order sources first published.
        self._sources: dict[str, tuple[bool, Mapping[str, Chunk]]] = {}
        self._prefixes: dict[str, LabelTexts] = {}
        self._changing: dict[str, _Changing] = {}
        self._version = 0
        self._body: _Body | None = None
        # Set at every change of what a scrape would serve (see exporter.MetricsApp).
        self.changed = threading.Event()

    def declare(self, spec: MetricSpec) -> None:
        """Remember the HELP and TYPE lines of ``spec``'s family."""
        header = family_header(spec)
        with self._lock:
            if self._headers.get(spec.name) != header:
                self._headers[spec.name] = header
                self._version += 1
                self.changed.set()

    def render(self, source: str, samples: Iterable[Sample], stamped: bool
               ) -> dict[str, bytes]:
        """Render ``source``'s samples (outside any lock); ``put`` them once published."""
        chunks, prefixes = render_source(samples, stamped, self._prefixes.get(source, {}))
        self._prefixes[source] = prefixes
        self._changing.pop(source, None)
        return chunks

    def render_changes(self, source: str, changes: Changes, at: float, stamped: bool, *,
                       full: bool) -> dict[str, Chunk]:
        """Render what changed of ``source`` (outside any lock); ``put`` the result once
        published. ``full``: ``changes`` holds all of the source's series."""
        state = self._changing.get(source)
        if state is None or full:
            state = self._changing[source] = _Changing()
            self._prefixes.pop(source, None)
        families, texts = state.families, state.texts
        changed, removed = changes
        # The families whose lines change: only theirs are copied for this publish (a copy
        # of thousands of lines costs about a millisecond, most of it in cache misses).
        touched = set(map(_NAME, changed))
        for name, labels in removed:
            lines = families.get(name)
            if lines is not None and lines.pop(labels, None) is not None:
                touched.add(name)
                if not lines:
                    del families[name]
        last_labels: Labels | None = None
        for sample in changed:
            name, labels = sample.name, sample.labels
            if labels is not last_labels:
                last_labels = labels
                key = id(labels)
                hit = texts.get(key)
                if hit is None or hit[0] is not labels:
                    texts[key] = (labels, label_text(labels))
            lines = families.get(name)
            if lines is None:
                lines = families[name] = {}
            lines[labels] = go_float(sample.value)
        if removed and len(texts) > 2 * sum(map(len, families.values())):
            # Label texts of series long gone: keep only the current series'.
            current = {id(labels) for lines in families.values() for labels in lines}
            state.texts = {key: hit for key, hit in texts.items() if key in current}
        end = f" {round(float(at) * 1000)}\n" if stamped else "\n"
        before = state.chunks
        chunks: dict[str, _Lines] = {}
        texts = state.texts
        for name, lines in families.items():
            old = before.get(name)
            if old is None or name in touched:
                chunks[name] = _Lines(name, tuple(lines), tuple(lines.values()), texts, end)
            elif old.end == end:
                # Untouched, and unstamped (or stamped at the same time): the same chunk,
                # so its joined bytes and their deflated block are reused.
                chunks[name] = old
            else:
                chunks[name] = _Lines(name, old.keys, old.values, old.texts, end)
        state.chunks = chunks
        return dict(chunks)

    def put(self, source: str, stamped: bool, chunks: Mapping[str, Chunk]) -> None:
        """Make ``chunks`` (from ``render``) the source's exposition."""
        with self._lock:
            self._sources[source] = (stamped, chunks)
            self._version += 1
        self.changed.set()

    def drop(self, source: str) -> None:
        """The source has no current snapshot any more."""
        with self._lock:
            if self._sources.pop(source, None) is not None:
                self._version += 1
                self.changed.set()
        self._changing.pop(source, None)

    def body(self, names: Collection[str] | None = None) -> bytes:
        """The text exposition of every family (or of the families in ``names``)."""
        if names is not None:
            return b"".join(piece for family in self._families(names)
                            for piece in family.pieces())
        return self._current().data()

    def gzipped_parts(self) -> tuple[list[bytes], int, int]:
        """The deflate blocks of ``body()`` (no header, no end block), its CRC-32 and length.

        Each family's block is compressed once and reused until its content changes.
        """
        body = self._current()
        blocks = []
        for family in body.families:
            if family.deflated is None:
                family.deflated = _deflate(b"".join(family.pieces()))
            blocks.append(family.deflated)
        crc, size = body.checksum()
        for family in body.families:
            family.release()
        return blocks, crc, size

    def compressed(self) -> bool:
        """Whether the current exposition's gzip form is ready (a scrape only joins it)."""
        with self._lock:
            body, version = self._body, self._version
        return (body is not None and body.version == version and body.sum is not None
                and all(family.deflated is not None for family in body.families))

    def _current(self) -> _Body:
        with self._lock:
            body, version = self._body, self._version
        if body is not None and body.version == version:
            return body
        families = self._families(None)
        if body is not None:
            # Unchanged families keep their deflated block.
            before = {family.name: family for family in body.families}
            for family in families:
                old = before.get(family.name)
                if old is not None and old.deflated is not None and family.same_as(old):
                    family.deflated = old.deflated
        fresh = _Body(version, families)
        with self._lock:
            if self._body is None or self._body.version < version:
                self._body = fresh
        return fresh

    def _families(self, names: Collection[str] | None) -> list[_Family]:
        with self._lock:
            sources = list(self._sources.values())
            headers = self._headers
        stamped: dict[str, list[Chunk]] = {}
        unstamped: dict[str, list[Chunk]] = {}
        for is_stamped, chunks in sources:
            into = stamped if is_stamped else unstamped
            for name, chunk in chunks.items():
                if names is None or name in names:
                    into.setdefault(name, []).append(chunk)
        return [_Family(name, (headers[name], *stamped.get(name, ()), *unstamped.get(name, ())))
                for name in sorted(stamped.keys() | unstamped.keys())]


def gzip_member(parts: list[bytes], crc: int, size: int) -> bytes:
    """One gzip member from deflate blocks that each end on a byte boundary."""
    trailer = (crc & 0xFFFFFFFF).to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little")
    return b"".join((_GZIP_HEADER, *parts, _DEFLATE_END, trailer))


def deflate_block(data: bytes) -> bytes:
    """``data`` as a deflate block that ``gzip_member`` can append to others."""
    return _deflate(data)
