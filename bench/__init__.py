"""Benchmarks, run from the repository root as modules (``python -m bench.rules_bench``), so
that they import ``piggywatch`` and the test support package (``tests.support``: the local
servers, free ports, waiting) the way the tests do, with no path edits."""
