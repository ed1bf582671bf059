"""Positions, the main query's parameter, patched from reads without a database.

After any sequence of reads (entries scattered, runs that moved, a view that grew or
shrank), the parameter must be the binary int8[] of the fold at every position, as if built
afresh from the view.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from piggywatch.collectors.postgres.statement_positions import Positions, Read
from piggywatch.collectors.postgres.statement_snapshot import encode_array, runs

FOLDS = st.integers(-2**63, 2**63 - 1)


def read_of(positions: list[int], folds: list[int]) -> Read:
    """A read returning the entries at ``positions`` with ``folds`` (only folds matter)."""
    return Read(positions, ([], [], [], []), [], encode_array(folds, "q"), None, None, None,
                whole=False)


@st.composite
def reads(draw: st.DrawFn) -> list[tuple[int, list[int], list[int]]]:
    """Views one after another: each a size, the positions read and their folds."""
    out = []
    size = 0
    for _ in range(draw(st.integers(1, 6))):
        new_size = draw(st.integers(1, 60))
        # Every position past the old end is read; before it, scattered ones or a run.
        if draw(st.booleans()):
            start = draw(st.integers(0, new_size - 1))
            kept = list(range(start, min(size, new_size)))
        else:
            kept = sorted(draw(st.sets(st.integers(0, max(0, min(size, new_size) - 1)))))
            kept = [p for p in kept if p < min(size, new_size)]
        positions = sorted({*kept, *range(size, new_size)}) or [new_size - 1]
        out.append((new_size, positions, draw(st.lists(FOLDS, min_size=len(positions),
                                                       max_size=len(positions)))))
        size = new_size
    return out


@settings(max_examples=300)
@given(reads())
def test_patched_positions_are_the_folds_of_the_view(history: list[tuple[int, list[int],
                                                                         list[int]]]) -> None:
    positions, view = Positions(), list[int]()
    for size, read, folds in history:
        view = (view + [0] * size)[:size]
        for position, fold in zip(read, folds, strict=True):
            view[position] = fold
        positions.patch(read_of(read, folds), size)
        last, param = positions.params()
        assert int(last) == size
        assert param.data == encode_array(view, "q")


@given(st.sets(st.integers(0, 200)))
def test_runs_cover_the_positions_in_order(chosen: set[int]) -> None:
    positions = sorted(chosen)
    firsts, lasts, at = runs(positions)
    rebuilt = [p for first, last, start in zip(firsts, lasts, at, strict=True)
               for p in range(start, start + last - first)]
    assert rebuilt == positions
    # Runs are maximal: no run ends where the next begins.
    assert all(at[r] + lasts[r] - firsts[r] < at[r + 1] for r in range(len(at) - 1))
