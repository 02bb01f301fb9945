"""Dagster entry point (workspace.yaml and `dagster ... -m flock_pipeline.definitions` load this)."""

from flock_pipeline.defs import build_definitions

defs = build_definitions()
