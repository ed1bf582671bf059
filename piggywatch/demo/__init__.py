"""Throwaway PostgreSQL, demo schema and synthetic workload for `piggywatch demo` and tests."""
