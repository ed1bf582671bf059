"""Rules: rule files, the PromQL-subset evaluator, and the alert state machine."""
