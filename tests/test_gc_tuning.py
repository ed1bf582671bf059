"""run tunes the cyclic garbage collector for a long-running daemon (piggywatch/gc_tuning)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from piggywatch import gc_tuning


@pytest.fixture
def tuned() -> Iterator[None]:
    before = gc.get_threshold()
    gc_tuning.tune()
    try:
        yield
    finally:
        gc.set_threshold(*before)


def test_a_cycle_of_a_few_thousand_objects_sets_off_no_collection(tuned: None) -> None:
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        kept = [[n] for n in range(5_000)]  # what a statements cycle allocates, about
    finally:
        gc.callbacks.remove(count)
    assert len(kept) == 5_000
    assert collections == []
    # Cycles are still collected: the collector is tuned, not off.
    assert gc.isenabled() and gc.get_threshold() == gc_tuning.THRESHOLDS
