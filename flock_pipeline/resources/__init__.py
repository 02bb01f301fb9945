"""One ConfigurableResource per outside system, each with its embedded local implementation: the chain (local,
Bittensor), the hub (local, Hugging Face), the evaluator, the store and the validator settings. `build_resources`
(environment.py) wires them from the environment variables it lists."""

from flock_pipeline.errors import ConfigError
from flock_pipeline.resources.chain import ChainResource, LocalChainResource
from flock_pipeline.resources.environment import (BACKFILLS, DATASET_BATCH, DEFAULT_MINER_BATCH, EXECUTORS, NETWORKS,
                                                  batch_settings, build_resources, celery_settings,
                                                  check_competitions, executor_settings, flock_home, store_url,
                                                  validation_text)
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.hub import HubResource, LocalHubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource

__all__ = ["BACKFILLS", "DATASET_BATCH", "DEFAULT_MINER_BATCH", "EXECUTORS", "NETWORKS", "ChainResource",
           "ConfigError", "EvaluatorResource", "HubResource", "LocalChainResource", "LocalHubResource",
           "StoreResource", "ValidatorSettingsResource", "batch_settings", "build_resources", "celery_settings",
           "check_competitions", "executor_settings", "flock_home", "store_url", "validation_text"]
