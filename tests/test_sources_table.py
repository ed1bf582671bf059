"""One table of sources (jobs.SOURCES): every key of ``sources:`` has a module there, and
every module exports what the daemon and the docs read from it."""

from __future__ import annotations

from importlib import import_module

from piggywatch.config import SourcesConfig
from piggywatch.jobs import SOURCES


def test_every_sources_key_has_its_module_in_the_table() -> None:
    assert list(SOURCES) == list(SourcesConfig.model_fields)


def test_every_source_module_exports_specs_and_build() -> None:
    for key, name in SOURCES.items():
        module = import_module(name)
        assert callable(module.build), key
        assert isinstance(module.SPECS, tuple), key
