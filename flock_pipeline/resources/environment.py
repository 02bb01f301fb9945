"""The resources of a validator from the environment (`build_resources`), checked before any work, and the deployment
settings (executor, batches, Celery):

    FLOCK_HOME        where the embedded network, the store and the caches live (default: ./.flock)
    FLOCK_NETWORK     local (default: the embedded chain and hub) | test | finney (Bittensor testnet / mainnet
                      and the Hugging Face Hub); anything else is a configuration error, never a silent fallback
    FLOCK_CHAIN_ENDPOINT   a ws(s):// URL instead of the network's default endpoint (test / finney)
    FLOCK_CHAIN_FALLBACKS  comma-separated ws(s):// URLs tried in order when the endpoint cannot be reached
    FLOCK_CHAIN_FILE  the embedded chain's file (default: $FLOCK_HOME/chain.json): a miner's home on the same
                      machine as a validator points here to read the validator's weights from the chain
    FLOCK_HUB_DIR     the embedded hub's directory (default: $FLOCK_HOME/hub), shared the same way
    FLOCK_REPORT_REPOS  comma-separated report repos `flock miner status` reads (validators' `report_repo`)
    FLOCK_TEMPO       pin the pipeline's epochs to block // FLOCK_TEMPO (default: the chain's own epoch index)
    FLOCK_HF_ENDPOINT the hub's URL (default https://huggingface.co); HF_TOKEN holds the token (never logged)
    BT_WALLET_NAME / BT_WALLET_HOTKEY / BT_WALLET_PATH / BT_WALLET_PASSWORD   the signing wallet (test / finney)
    FLOCK_BASE_MODEL  "tiny" (default, built offline) or a local model directory
    FLOCK_DEVICE      auto | cpu | cuda
    FLOCK_RECIPE      JSON object of TrainRecipe overrides
    FLOCK_MULTI_LORA  auto (default: on CUDA, a batch's miners train side by side over one base) | on | off
    FLOCK_SETTINGS    JSON object of ValidatorSettingsResource overrides (dedup, scoring mode, limits, ...)
    FLOCK_COMPETITIONS  the competitions: a preset (curation | sn96 | selection-local), JSON, or @path to a JSON
                      file; default: $FLOCK_HOME/competitions.json when it exists, else one curation game
    FLOCK_EVAL_TIMEOUT_S  time limit of one evaluation run, enforced by Dagster's run monitoring (0: none)
    FLOCK_STORE       where results are kept: duckdb:///path/file.duckdb (default: $FLOCK_HOME/warehouse.duckdb)
                      or postgresql://user:password@host:5432/db (several processes and hosts)
    FLOCK_EXECUTOR    how a run's steps execute: in_process (default: every step of a run in the run's process, the
                      base model loaded once) | multiprocess (one process per step) | celery (steps go to Celery
                      workers; evaluations to the `gpu` queue)
    FLOCK_MINER_BATCH  miners per run of a per-miner stage that the sensors and `flock epoch run` request
                      (default 64; datasets are fetched up to DATASET_BATCH per run)
    FLOCK_BACKFILL    single_run (default: a backfill of per-miner partitions from the UI is one run, and
                      `dagster asset materialize --partition-range` works) | multi_run (UI backfills split into runs
                      of FLOCK_MINER_BATCH miners; Dagster's CLI then refuses partition ranges)
    FLOCK_CELERY_BROKER / FLOCK_CELERY_BACKEND   the Celery broker and result backend (redis://host:6379/0); the
                      backend defaults to the broker
    FLOCK_CELERY_VISIBILITY_TIMEOUT_S  seconds a step may run before Redis hands it to another worker (default
                      21600: must exceed the longest evaluation)
    FLOCK_EVAL_RUN_TAGS  JSON object of extra tags on evaluation runs (e.g. dagster-k8s/config with a GPU request)
    FLOCK_EVAL_REPO / FLOCK_EVAL_REVISION, FLOCK_VALIDATOR_HOTKEY, FLOCK_NETUID
    FLOCK_HELDOUT_REPO  the curation game's held-out set (never scored against) for `flock corpus value`; the local
                      network's default is the demo's `flock/heldout-atlas`, a real network has none unless set
    FLOCK_ALERT_WEBHOOK  a Slack- or Discord-compatible webhook URL the alert sensors post to (unset: no alerts;
                      a secret: never logged or posted)
    FLOCK_ALERT_MIN_INTERVAL_S  seconds between two posts of one condition (default 3600)
    FLOCK_ALERT_EPOCHS  N of "weights not applied for N epochs" and "no commitments for N epochs" (default 3)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from flock_pipeline.errors import ConfigError
from flock_pipeline.resources.alerts import DEFAULT_EPOCHS, DEFAULT_MIN_INTERVAL_S, AlertSettings, check_webhook
from flock_pipeline.resources.chain import ChainResource, LocalChainResource
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.hub import HubResource, LocalHubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource



def flock_home() -> Path:
    return Path(os.environ.get("FLOCK_HOME") or Path.cwd() / ".flock").resolve()


def _settings_from_env(network: str) -> dict:
    """The validator settings FLOCK_SETTINGS and the single-value variables give."""
    settings = _settings_overrides(os.environ.get("FLOCK_SETTINGS", "{}"))
    for variable, field in (("FLOCK_EVAL_REPO", "eval_repo"), ("FLOCK_EVAL_REVISION", "eval_revision"),
                            ("FLOCK_VALIDATOR_HOTKEY", "validator_hotkey")):
        if os.environ.get(variable):
            settings[field] = os.environ[variable]
    if network != "local" or "FLOCK_HELDOUT_REPO" in os.environ:  # the local network's default: the demo's
        settings["heldout_repo"] = os.environ.get("FLOCK_HELDOUT_REPO", "")
    return settings


def build_resources(home: Path | None = None, training: bool = True) -> dict:
    """The resources of a validator, from the environment. Keys are the names assets ask for. `training=False`: for
    a command that trains nothing (the chain, the store, a miner's checks), a recipe this machine cannot train (the
    live 4-bit recipe without CUDA) is no reason to refuse it."""
    home = Path(home or flock_home())
    network = os.environ.get("FLOCK_NETWORK", "local")
    if network not in NETWORKS:
        raise ConfigError(f"FLOCK_NETWORK={network!r}: use one of {', '.join(NETWORKS)}")
    netuid = whole_number("FLOCK_NETUID", 96, minimum=0)
    settings = _settings_from_env(network)
    if network == "local":
        chain: ChainResource = LocalChainResource(path=os.environ.get("FLOCK_CHAIN_FILE") or str(home / "chain.json"),
                                                  netuid=netuid)
        hub: HubResource = LocalHubResource(root=os.environ.get("FLOCK_HUB_DIR") or str(home / "hub"))
    else:
        chain, hub = _real_network(network, netuid, home)
        if not os.environ.get("FLOCK_VALIDATOR_HOTKEY") and os.environ.get("BT_WALLET_HOTKEY"):
            settings["validator_hotkey"] = os.environ["BT_WALLET_HOTKEY"]  # the wallet's hotkey name (alias)
    competitions = os.environ.get("FLOCK_COMPETITIONS", "")
    if not competitions and (home / "competitions.json").is_file():
        competitions = f"@{home / 'competitions.json'}"
    if competitions:
        settings["competitions"] = competitions
    evaluator = EvaluatorResource(base_model=os.environ.get("FLOCK_BASE_MODEL", "tiny"),
                                  device=device_setting(),
                                  recipe=os.environ.get("FLOCK_RECIPE", "{}"),
                                  timeout_s=whole_number("FLOCK_EVAL_TIMEOUT_S", 0, minimum=0),
                                  run_tags=_eval_run_tags(os.environ.get("FLOCK_EVAL_RUN_TAGS", "{}")),
                                  multi_lora=os.environ.get("FLOCK_MULTI_LORA", "auto") or "auto",
                                  cache_dir=str(home / "models"))
    try:
        evaluator.check_multi_lora()
    except ValueError as exc:
        raise ConfigError(f"FLOCK_MULTI_LORA: {exc}") from exc
    try:
        validator_settings = ValidatorSettingsResource(corpus_dir=str(home / "corpus"), **settings)
    except Exception as exc:  # pydantic's ValidationError: a wrong type or value in FLOCK_SETTINGS
        raise ConfigError(f"FLOCK_SETTINGS: {validation_text(exc)}") from exc
    if validator_settings.report_repo:
        from flock_pipeline.core.commitment import CommitmentError, validate_repo_id

        try:
            validate_repo_id(validator_settings.report_repo)
        except (CommitmentError, ValueError) as exc:
            raise ConfigError(f"FLOCK_SETTINGS: report_repo: {exc}") from exc
    check_competitions(validator_settings, evaluator, device=training)
    _check_eval_repo(network, validator_settings)
    executor_settings()  # checked now too: a wrong executor is a configuration error before any work
    batch_settings()
    alert_settings()
    return {
        "chain": chain,
        "hub": hub,
        "evaluator": evaluator,
        "store": StoreResource(url=store_url(home)),
        "settings": validator_settings,
    }


def store_url(home: Path | None = None) -> str:
    """FLOCK_STORE, checked: the store's database (default: the DuckDB file in the home)."""
    from flock_pipeline.store import StoreURLError, parse_url

    url = os.environ.get("FLOCK_STORE", "")
    if not url:
        return f"duckdb://{Path(home or flock_home()) / 'warehouse.duckdb'}"
    try:
        parse_url(url)
    except StoreURLError as exc:
        raise ConfigError(f"FLOCK_STORE: {exc}") from exc
    return url


EXECUTORS = ("in_process", "multiprocess", "celery")
BACKFILLS = ("single_run", "multi_run")
DEFAULT_MINER_BATCH = 64  # a run's fixed cost (process, imports, CUDA, loading the base model) over 64 miners
DATASET_BATCH = 256  # dataset downloads per run: no GPU, mostly waiting on the hub


def whole_number(variable: str, default: int, minimum: int | None = None) -> int:
    """An environment variable that holds a whole number (unset or empty: `default`); anything else is a
    ConfigError naming the variable and the value, before any work."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{variable}={raw[:40]!r}: must be a whole number") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{variable}={value}: must be at least {minimum}")
    return value


def device_setting() -> str:
    """FLOCK_DEVICE, checked: auto, cpu, cuda or cuda:N (a wrong value is a ConfigError naming the variable, before
    any work, not torch's error half-way through an epoch)."""
    device = os.environ.get("FLOCK_DEVICE", "").strip() or "auto"
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(f"FLOCK_DEVICE={device[:40]!r}: use auto, cpu, cuda or cuda:N")
    return device


def alert_settings() -> AlertSettings:
    """FLOCK_ALERT_WEBHOOK, FLOCK_ALERT_MIN_INTERVAL_S and FLOCK_ALERT_EPOCHS, checked, with the network and netuid
    an alert names. A wrong value is a ConfigError naming the variable (the webhook's value is never shown)."""
    webhook = os.environ.get("FLOCK_ALERT_WEBHOOK", "").strip()
    problem = check_webhook(webhook) if webhook else None
    if problem is not None:
        raise ConfigError(f"FLOCK_ALERT_WEBHOOK {problem}")
    return AlertSettings(webhook=webhook,
                         min_interval_s=whole_number("FLOCK_ALERT_MIN_INTERVAL_S", DEFAULT_MIN_INTERVAL_S, minimum=0),
                         epochs=whole_number("FLOCK_ALERT_EPOCHS", DEFAULT_EPOCHS, minimum=1),
                         network=os.environ.get("FLOCK_NETWORK", "local") or "local",
                         netuid=whole_number("FLOCK_NETUID", 96, minimum=0))


def batch_settings() -> tuple[int, str]:
    """FLOCK_MINER_BATCH and FLOCK_BACKFILL, checked: (miners per run, backfill policy kind)."""
    raw = os.environ.get("FLOCK_MINER_BATCH", "") or str(DEFAULT_MINER_BATCH)
    try:
        batch = int(raw)
    except ValueError:
        batch = 0
    if batch < 1:
        raise ConfigError(f"FLOCK_MINER_BATCH={raw!r}: a whole number of miners per run, at least 1")
    backfill = os.environ.get("FLOCK_BACKFILL", "") or "single_run"
    if backfill not in BACKFILLS:
        raise ConfigError(f"FLOCK_BACKFILL={backfill!r}: use one of {', '.join(BACKFILLS)}")
    return batch, backfill


def executor_settings() -> tuple[str, dict | None]:
    """FLOCK_EXECUTOR, checked: (kind, the Celery executor's config for kind "celery", else None)."""
    kind = os.environ.get("FLOCK_EXECUTOR", "in_process") or "in_process"
    if kind not in EXECUTORS:
        raise ConfigError(f"FLOCK_EXECUTOR={kind!r}: use one of {', '.join(EXECUTORS)}")
    return kind, celery_settings() if kind == "celery" else None


def celery_settings() -> dict:
    """The Celery executor's and workers' shared config (`execution.config` of dagster-celery), from the environment.

    Steps are acknowledged only when they finish and put back when their worker process dies
    (`task_acks_late`, `task_reject_on_worker_lost`), one at a time per worker process (prefetch 1): a killed
    worker's evaluation runs again on another worker instead of failing the run or hanging it."""
    broker = os.environ.get("FLOCK_CELERY_BROKER", "")
    if not broker:
        raise ConfigError("FLOCK_EXECUTOR=celery: set FLOCK_CELERY_BROKER to the broker's URL, "
                          "e.g. redis://host:6379/0")
    if not broker.startswith(("redis://", "rediss://", "amqp://", "pyamqp://")):
        raise ConfigError(f"FLOCK_CELERY_BROKER={broker.split('@')[-1]!r}: use a redis:// or amqp:// URL")
    visibility = whole_number("FLOCK_CELERY_VISIBILITY_TIMEOUT_S", 21600)
    if visibility < 60:
        raise ConfigError("FLOCK_CELERY_VISIBILITY_TIMEOUT_S must be at least 60 (and exceed the longest step)")
    return {"broker": broker, "backend": os.environ.get("FLOCK_CELERY_BACKEND") or broker,
            "config_source": {"task_acks_late": True, "task_reject_on_worker_lost": True,
                              "worker_prefetch_multiplier": 1,
                              # Redis: a step of a worker that died is handed out again `visibility` seconds
                              # after it was, found by a sweep of the live workers every 10 s
                              "broker_transport_options": {"visibility_timeout": visibility,
                                                           "unacked_restore_interval": 10,
                                                           "unacked_restore_throttle": 1}}}


def check_competitions(settings: ValidatorSettingsResource, evaluator: EvaluatorResource, device: bool = True) -> None:
    """Build the competitions and each one's training recipe now, before any work: a wrong value is a
    ConfigError naming the competition and the field (with `device`, a recipe this machine cannot train too)."""
    from flock_pipeline.core.competitions import CompetitionConfigError

    try:
        competitions = settings.competition_set()
    except CompetitionConfigError as exc:
        raise ConfigError(str(exc)) from exc
    for c in competitions:
        try:
            evaluator.check_recipe(c.recipe_overrides(), device=device)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"competition {c.name!r}: recipe: {exc}") from exc
        problem = c.config_problem(settings.dataset_limits())
        if problem is not None:
            raise ConfigError(f"competition {c.name!r}: {problem}")


def _check_eval_repo(network: str, settings: ValidatorSettingsResource) -> None:
    """On a real network a curation game needs FLOCK_EVAL_REPO: the demo's eval set would stand in for the real one
    (games that name their own eval sets need none)."""
    if network != "local" and not os.environ.get("FLOCK_EVAL_REPO") and any(
            c.kind == "curation" and c.eval_repo == settings.eval_repo for c in settings.competition_set()):
        raise ConfigError(f"FLOCK_NETWORK={network}: set FLOCK_EVAL_REPO to the curation game's eval set (a "
                          "competitions document whose games name their own eval sets, like FLOCK_COMPETITIONS=sn96, "
                          "needs none)")


NETWORKS = ("local", "test", "finney")


def _real_network(network: str, netuid: int, home: Path) -> tuple[ChainResource, HubResource]:
    """The Bittensor chain and the Hugging Face Hub, configured from the environment (secrets stay there)."""
    from flock_pipeline.resources.bittensor_chain import BittensorChainResource
    from flock_pipeline.resources.hf_hub import HuggingFaceHubResource

    fallbacks = [u.strip() for u in os.environ.get("FLOCK_CHAIN_FALLBACKS", "").split(",") if u.strip()]
    tempo = whole_number("FLOCK_TEMPO", 0, minimum=0)
    chain = BittensorChainResource(network=os.environ.get("FLOCK_CHAIN_ENDPOINT") or network,
                                   fallback_endpoints=fallbacks, netuid=netuid, tempo=tempo)
    hub = HuggingFaceHubResource(endpoint=os.environ.get("FLOCK_HF_ENDPOINT", "https://huggingface.co"),
                                 cache_dir=str(home / "hub-cache"), offline=False)
    return chain, hub


def _json_object(variable: str, text: str, what: str) -> dict:
    """The JSON object an environment variable holds; anything else is a ConfigError naming the variable."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{variable} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{variable} must be a JSON object of {what}")
    return value


def _eval_run_tags(text: str) -> str:
    """FLOCK_EVAL_RUN_TAGS: a JSON object (tag -> text, or a JSON value written as text)."""
    return json.dumps(_json_object("FLOCK_EVAL_RUN_TAGS", text, "run tags"), sort_keys=True)


def validation_text(exc: Exception) -> str:
    """A pydantic ValidationError as one line ("field: what is wrong; ..."); any other error as it is."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for e in errors():
        where = ".".join(str(x) for x in e.get("loc", ()))
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where and not msg.startswith(f"{where}:") else msg)
    return "; ".join(parts) or str(exc)


def _settings_overrides(text: str) -> dict:
    """FLOCK_SETTINGS: a JSON object of ValidatorSettingsResource fields; unknown fields are an error."""
    from flock_pipeline.resources.settings import MOVED

    overrides = _json_object("FLOCK_SETTINGS", text, "validator settings")
    unknown = sorted(set(overrides) - set(ValidatorSettingsResource.model_fields))
    moved = [f"{name} is now {MOVED[name]}" for name in unknown if name in MOVED]
    if moved:
        example = """FLOCK_SETTINGS='{"scoring": {"mode": "curve"}, "dedup": {"near": null}}'"""
        raise ConfigError(f"FLOCK_SETTINGS: {'; '.join(moved)} (the limits, dedup and scoring settings are nested "
                          f"objects: {example})")
    if unknown:
        raise ConfigError(f"FLOCK_SETTINGS: unknown setting(s) {', '.join(unknown)}")
    return overrides
