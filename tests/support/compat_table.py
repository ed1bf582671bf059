"""Every family postgres_exporter exposes, and whether PiggyWatch has it with the same label
names and type: ``python -m tests.support.compat_table DSN`` (a superuser DSN of a database
both read; prints a Markdown table and a summary; exit 1 when a family is missing)."""

from __future__ import annotations

import sys

import httpx

from tests.support.compat import Exposition, piggywatch_exposition, postgres_exporter

# The label PiggyWatch adds to every series of a target (beside upstream's ``server``).
OURS_ONLY = {"target"}


def rows(theirs: Exposition, ours: Exposition) -> list[tuple[str, str, str, str]]:
    """(family, present, same label names, same type) for each of postgres_exporter's."""
    out = []
    for name in sorted(theirs.families()):
        if name not in ours.series:
            out.append((name, "missing", "", ""))
            continue
        their_labels = set().union(*(set(s) for s in theirs.series[name]))
        our_labels = set().union(*(set(s) for s in ours.series[name])) - OURS_ONLY
        same_labels = "yes" if their_labels == our_labels else (
            f"no: {sorted(their_labels ^ our_labels)}")
        their_type = theirs.types.get(name, "untyped")
        our_type = ours.types.get(name, "untyped")
        same_type = "yes" if their_type == our_type else f"{their_type} → {our_type}"
        out.append((name, "yes", same_labels, same_type))
    return out


def main() -> int:
    dsn = sys.argv[1]
    with postgres_exporter(dsn) as url:
        theirs = Exposition.parse(httpx.get(url, timeout=30).text)
    ours = Exposition.parse(piggywatch_exposition(dsn))
    table = rows(theirs, ours)
    print("| family | present | same label names | same type |")
    print("|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    missing = [r[0] for r in table if r[1] == "missing"]
    other_labels = [r[0] for r in table if r[2] not in ("", "yes")]
    other_type = [r[0] for r in table if r[3] not in ("", "yes")]
    print(f"\n{len(table)} families of postgres_exporter: {len(table) - len(missing)} present, "
          f"{len(missing)} missing {missing}; label names differ: {other_labels}; "
          f"type differs: {other_type}")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
