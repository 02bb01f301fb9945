"""The validator's steps: each combines resources with one piece of core logic and records its result.

Dagster assets (defs/) call exactly one of these; the CLI and tests may call them directly. Nothing here imports
dagster's decorators: the steps take resources as plain objects.
"""
