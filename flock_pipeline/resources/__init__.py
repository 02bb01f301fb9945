"""One ConfigurableResource per outside system, each with its embedded local implementation.

`build_resources` wires them from the environment:

    FLOCK_HOME        where the embedded network lives (default: ./.flock)
    FLOCK_NETWORK     local (default). The real Bittensor / Hugging Face backends are not in this release:
                      any other value is a configuration error, never a silent fallback.
    FLOCK_BASE_MODEL  "tiny" (default, built offline) or a local model directory
    FLOCK_DEVICE      auto | cpu | cuda
    FLOCK_RECIPE      JSON object of TrainRecipe overrides
    FLOCK_EVAL_REPO / FLOCK_EVAL_REVISION, FLOCK_VALIDATOR_HOTKEY, FLOCK_NETUID
"""

from __future__ import annotations

import os
from pathlib import Path

from flock_pipeline.resources.chain import ChainResource, LocalChainResource
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.hub import HubResource, LocalHubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.warehouse import WarehouseResource

__all__ = ["ChainResource", "LocalChainResource", "HubResource", "LocalHubResource", "EvaluatorResource",
           "ValidatorSettingsResource", "WarehouseResource", "build_resources", "flock_home", "ConfigError"]


class ConfigError(ValueError):
    """The configuration (environment) is invalid; the message says what to change."""


def flock_home() -> Path:
    return Path(os.environ.get("FLOCK_HOME") or Path.cwd() / ".flock").resolve()


def build_resources(home: Path | None = None) -> dict:
    """The resources of a validator, from the environment. Keys are the names assets ask for."""
    home = Path(home or flock_home())
    network = os.environ.get("FLOCK_NETWORK", "local")
    if network != "local":
        raise ConfigError(f"FLOCK_NETWORK={network!r}: only 'local' is available in this release")
    netuid = int(os.environ.get("FLOCK_NETUID", "96"))
    settings = {}
    if os.environ.get("FLOCK_EVAL_REPO"):
        settings["eval_repo"] = os.environ["FLOCK_EVAL_REPO"]
    if os.environ.get("FLOCK_EVAL_REVISION"):
        settings["eval_revision"] = os.environ["FLOCK_EVAL_REVISION"]
    if os.environ.get("FLOCK_VALIDATOR_HOTKEY"):
        settings["validator_hotkey"] = os.environ["FLOCK_VALIDATOR_HOTKEY"]
    return {
        "chain": LocalChainResource(path=str(home / "chain.json"), netuid=netuid),
        "hub": LocalHubResource(root=str(home / "hub")),
        "evaluator": EvaluatorResource(base_model=os.environ.get("FLOCK_BASE_MODEL", "tiny"),
                                       device=os.environ.get("FLOCK_DEVICE", "auto"),
                                       recipe=os.environ.get("FLOCK_RECIPE", "{}"),
                                       cache_dir=str(home / "models")),
        "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
        "settings": ValidatorSettingsResource(corpus_dir=str(home / "corpus"), **settings),
    }
