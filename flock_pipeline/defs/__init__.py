"""The Dagster layer: assets, asset checks, partitions, sensors and resource wiring. Thin by design."""

from __future__ import annotations

import dagster as dg

from flock_pipeline.defs.assets import ASSETS
from flock_pipeline.defs.checks import CHECKS
from flock_pipeline.defs.sensors import SENSORS
from flock_pipeline.resources import build_resources


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    return dg.Definitions(assets=ASSETS, asset_checks=CHECKS, sensors=SENSORS,
                          resources=resources if resources is not None else build_resources())
