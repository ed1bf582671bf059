"""Alerting: routing, grouping, inhibition, silences, escalation, the outbox and notifiers.

The pipeline, in order (see dispatcher.py): alert events from the rules → inhibit →
silence → route → group → escalate → outbox → notifier.
"""
