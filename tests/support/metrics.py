"""Samples of an exposition as a dict, to assert on figures by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Values = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Values:
    """Every sample of an exposition, keyed by (name, labels) as exposed.

    prometheus-client's parser names every sample of a counter ``<family>_total``, also
    one exposed without the suffix (postgres_exporter's ``pg_stat_database_xact_commit``,
    which Prometheus stores under that name): such names are given back as exposed.
    """
    exposed = {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines()
               if line and not line.startswith("#")}

    def as_exposed(name: str) -> str:
        if name not in exposed and name.endswith("_total") and name[:-6] in exposed:
            return name[:-6]
        return name

    return {(as_exposed(s.name), frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(values: Values, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels``, or None."""
    found = [v for (n, ls), v in values.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} series"
    return found[0] if found else None


def total(values: Values, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(v for (n, ls), v in values.items() if n == name and set(labels.items()) <= ls)
