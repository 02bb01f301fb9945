"""`flock doctor`: what a validator needs, checked in order, one row each, with the fix of every failure.

Each check gives a row: its name, a status (ok, warn, fail, skip), what it found and, for a warning or a failure,
what to do. A check that needs an earlier one that did not pass is skipped, saying which. Nothing is changed: the
store is read without applying migrations, the embedded model is not copied, no extrinsic is sent.

Exit codes, as elsewhere: 0 every check passed (ok, warn or skip), 1 a check failed, 2 the configuration cannot be
used (a bad value, a wallet that is not there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 2**30
DISK_FAIL_GIB = 1  # below this, a run fails half-way (a download, a checkpoint, the store)
DISK_WARN_GIB = {"local": 2, "real": 20}  # the embedded network, and a real one (model, datasets, caches)
CUDA_EXTRA = "pip install -e \".[cuda]\""


@dataclass(frozen=True)
class Row:
    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""
    config: bool = False  # a failure of the configuration itself: exit 2

    def as_dict(self) -> dict:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def ok(detail: str) -> Row:
    return Row("", "ok", detail)


def warn(detail: str, fix: str) -> Row:
    return Row("", "warn", detail, fix)


def fail(detail: str, fix: str, config: bool = False) -> Row:
    return Row("", "fail", detail, fix, config)


@dataclass
class Context:
    """What the checks share: the resources the configuration gives, and the chain's rules for the hotkey."""

    network: str = "local"
    resources: dict = field(default_factory=dict)
    rules: Any = None

    @property
    def local(self) -> bool:
        return self.network == "local"


# -- the checks, in order ---------------------------------------------------------------------------------------


def _configuration(ctx: Context) -> Row:
    from flock_pipeline.resources import build_resources, flock_home

    ctx.resources = {name: _one_retry(r) for name, r in build_resources(training=False).items()}
    games = ", ".join(f"{c.name} ({c.kind})" for c in ctx.resources["settings"].competition_set())
    netuid = getattr(ctx.resources["chain"], "netuid", "?")
    return ok(f"network {ctx.network}, netuid {netuid}, home {flock_home()}; competitions: {games}")


def _one_retry(resource: Any) -> Any:
    """The chain or hub resource with at most one retry: a doctor says at once that a service does not answer."""
    if getattr(resource, "max_retries", 0) > 1:
        return resource.model_copy(update={"max_retries": 1})
    return resource


def _wallet(ctx: Context) -> Row:
    chain, hotkey = ctx.resources["chain"], ctx.resources["settings"].validator_hotkey
    if not hasattr(chain, "wallet_address"):
        return ok(f"the local chain: hotkey {hotkey!r} is a name there, no wallet files")
    from flock_pipeline.errors import ConfigError

    path = chain.wallet_hotkey_file()
    address = chain.wallet_address()  # ConfigError naming the file when it is not there
    if hotkey not in (address, os.environ.get(chain.wallet_hotkey_env, "")):
        raise ConfigError(f"FLOCK_VALIDATOR_HOTKEY={hotkey} is not the wallet's hotkey ({address})",
                          hint="unset FLOCK_VALIDATOR_HOTKEY, or set it to the wallet hotkey's address")
    return ok(f"{path}: hotkey {address}")


def _chain(ctx: Context) -> Row:
    chain = ctx.resources["chain"]
    block = chain.current_block()
    return ok(f"{chain.network_id()}: block {block}, epoch {chain.epoch_of(block)}, "
              f"{len(chain.metagraph())} neurons")


def _registration(ctx: Context) -> Row:
    chain, hotkey = ctx.resources["chain"], ctx.resources["settings"].validator_hotkey
    ctx.rules = rules = chain.weight_rules(hotkey)
    netuid = getattr(chain, "netuid", "?")
    if rules.uid is None:
        fix = (f"flock chain register {hotkey} --validator" if ctx.local else
               f"register the hotkey on the subnet: btcli subnet register --netuid {netuid}")
        return fail(f"hotkey {rules.hotkey} is not registered on netuid {netuid}", fix)
    return ok(f"hotkey {rules.hotkey} is uid {rules.uid} of {rules.subnet_n}")


def _permit(ctx: Context) -> Row:
    rules = ctx.rules
    if rules.owner:
        return ok(f"uid {rules.uid} is the subnet owner's hotkey, which needs no permit")
    if rules.permit:
        return ok(f"uid {rules.uid} holds a validator permit")
    hotkey = ctx.resources["settings"].validator_hotkey
    fix = (f"flock chain register {hotkey} --validator" if ctx.local else
           "permits go to the subnet's validators with the most stake at each epoch: add stake to the hotkey "
           "(btcli stake add), then wait for the next epoch")
    return fail(f"uid {rules.uid} has no validator permit: the chain refuses its weights "
                "(NeuronNoValidatorPermit)", fix)


def _stake(ctx: Context) -> Row:
    rules = ctx.rules
    if rules.owner:
        return ok("the subnet owner's hotkey is exempt from the stake threshold")
    if rules.stake < rules.stake_threshold:
        return fail(f"stake {rules.stake:.4f} is below the chain's threshold {rules.stake_threshold:.4f} "
                    "(NotEnoughStakeToSetWeights)",
                    f"add at least {rules.stake_threshold - rules.stake:.4f} to the hotkey (btcli stake add)")
    return ok(f"stake {rules.stake:.4f}, the chain's threshold {rules.stake_threshold:.4f}")


def _hub_token(ctx: Context) -> Row:
    hub, settings = ctx.resources["hub"], ctx.resources["settings"]
    if not hasattr(hub, "token_env"):
        return ok(f"the local hub in {hub.root}: no token needed")
    variable = hub.token_env
    token = (os.environ.get(variable) or "").strip()
    publishing = [repo for repo in (settings.report_repo, settings.corpus_repo) if repo]
    write_fix = f"set {variable} to a write token (https://huggingface.co/settings/tokens)"
    if not token:
        if publishing:
            return fail(f"{variable} is not set, and publishing to {', '.join(publishing)} needs a write token",
                        write_fix)
        return warn(f"{variable} is not set: reads are anonymous (lower rate limits, no gated repos)",
                    f"set {variable} to a read token (https://huggingface.co/settings/tokens)")
    user, role = _whoami(hub.endpoint, token, variable)
    if publishing and role == "read":
        return fail(f"the token in {variable} ({user}) is read-only, and publishing to {', '.join(publishing)} "
                    "needs write access", write_fix)
    return ok(f"the token in {variable} is accepted by {hub.endpoint} (user {user}, {role} token)")


def _whoami(endpoint: str, token: str, variable: str) -> tuple[str, str]:
    """(user name, token role) the hub gives for the token; HubError, never showing the token, when it refuses."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from flock_pipeline.resources.hf_hub import scrub
    from flock_pipeline.resources.hub import HubError

    try:
        info = HfApi(endpoint=endpoint).whoami(token=token)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status == 401:
            raise HubError(f"{endpoint} rejected the token in {variable} (HTTP 401)",
                           hint=f"create a new token and set {variable} to it") from None
        raise HubError(f"{endpoint} could not check the token: {scrub(str(exc), token)[:200]}") from None
    except Exception as exc:  # noqa: BLE001 - a connection failure of any kind: its text, the token scrubbed
        raise HubError(f"no answer from {endpoint}: {scrub(f'{type(exc).__name__}: {exc}', token)[:200]}",
                       hint="check FLOCK_HF_ENDPOINT and this machine's connection") from None
    role = ((info.get("auth") or {}).get("accessToken") or {}).get("role") or "unknown"
    return str(info.get("name") or "?"), str(role)


def _eval_repos(ctx: Context) -> Row:
    from flock_pipeline.resources.hub import HubError

    hub, settings = ctx.resources["hub"], ctx.resources["settings"]
    found, problems, transient = [], [], False
    for c in settings.competition_set():
        repo, revision = getattr(c, "eval_repo", ""), getattr(c, "eval_revision", "")
        if not repo:
            continue
        try:
            sha = hub.resolve(repo, revision) if revision else hub.head(repo)
            found.append(f"{c.name}: {repo}@{sha[:7]}")
        except HubError as exc:
            problems.append(f"{c.name}: {repo}: {exc}")
            transient = transient or exc.transient
    if transient:
        return fail("; ".join(problems), "check FLOCK_HF_ENDPOINT and this machine's connection, then run flock "
                    "doctor again")
    if problems:
        fix = ("seed the demo network (flock demo --no-run) or point FLOCK_HUB_DIR at the hub that holds it"
               if ctx.local else "check the repo's name (FLOCK_EVAL_REPO, or the competition's eval_repo) and that "
               "the token may read it (a gated repo needs its access request accepted)")
        return fail("; ".join(problems), fix)
    return ok("; ".join(found) or "no competition reads an eval repo")


def _device(ctx: Context) -> Row:
    import torch

    from flock_pipeline.core.model import nvidia_driver, resolve_device
    from flock_pipeline.errors import ValidatorFault

    evaluator, settings = ctx.resources["evaluator"], ctx.resources["settings"]  # FLOCK_DEVICE checked when read
    build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    machine = f"torch {torch.__version__}, {build}; NVIDIA driver: {nvidia_driver() or 'none'}"
    try:
        device = resolve_device(evaluator.device)
    except ValidatorFault as exc:
        return fail(str(exc).split("; install")[0], "install a torch build for that driver (make install "
                    "TORCH_SPEC=...; PyPI's CUDA 13.0 builds need driver 580 or newer), or set FLOCK_DEVICE=cpu to "
                    "train on the CPU on purpose")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        return fail(f"FLOCK_DEVICE={evaluator.device}, and torch sees no such CUDA device ({machine})",
                    "on a GPU machine install a CUDA build of torch for its driver (make install TORCH_SPEC=...); "
                    "elsewhere set FLOCK_DEVICE=cpu or auto")
    return _recipes_on(device, machine, evaluator, list(settings.competition_set()), ctx)


def _recipes_on(device, machine: str, evaluator, competitions: list, ctx: Context) -> Row:
    """Whether each competition's training recipe runs on `device` (a 4-bit recipe needs CUDA and bitsandbytes)."""
    import importlib.util

    import torch

    where = f"{device} ({torch.cuda.get_device_name(device)}; {machine})" if device.type == "cuda" else \
        f"{device} ({machine})"
    for c in competitions:
        try:
            recipe = evaluator.check_recipe(c.recipe_overrides(), device=True)
        except ValueError as exc:
            return fail(f"competition {c.name!r}: {exc}",
                        f"run this validator on a GPU machine with a CUDA build of torch and bitsandbytes "
                        f"({CUDA_EXTRA}); the commands that train nothing (flock chain status, flock epoch report) "
                        "work here")
        if recipe.needs_cuda and importlib.util.find_spec("bitsandbytes") is None:
            return fail(f"competition {c.name!r}: its recipe needs bitsandbytes, which is not installed",
                        CUDA_EXTRA)
    names = ", ".join(c.name for c in competitions)
    if device.type == "cpu" and not ctx.local and evaluator.base_model != "tiny":
        return warn(f"{where}: the recipes of {names} run here, on the CPU",
                    "a real base model trains on the CPU at a fraction of a GPU's speed: use a GPU machine")
    return ok(f"{where}: the recipes of {names} run here")


def _base_model(ctx: Context) -> Row:
    evaluator = ctx.resources["evaluator"]
    if evaluator.base_model == "tiny":
        return _tiny_model(Path(evaluator.cache_dir))
    from flock_pipeline.core.tiny_model import model_revision
    from flock_pipeline.errors import ConfigError

    path = Path(evaluator.base_model)
    download = f"hf download Qwen/Qwen2.5-1.5B-Instruct --local-dir {path}"
    if not path.is_dir():
        raise ConfigError(f"FLOCK_BASE_MODEL={evaluator.base_model}: not a directory",
                          hint=f"download the model there ({download}) or point FLOCK_BASE_MODEL at it")
    weights = sorted(path.glob("*.safetensors"))
    missing = [name for name, there in (("config.json", (path / "config.json").is_file()),
                                        ("*.safetensors", bool(weights)),
                                        ("tokenizer.json", (path / "tokenizer.json").is_file()
                                         or (path / "tokenizer_config.json").is_file())) if not there]
    if missing:
        return fail(f"{path} has no {', '.join(missing)}", f"download the whole model: {download}")
    size = sum(w.stat().st_size for w in weights) / GIB
    return ok(f"{path}: {len(weights)} safetensors file(s), {size:.1f} GiB; digest {model_revision(path)}")


def _tiny_model(cache_dir: Path) -> Row:
    from flock_pipeline.core.tiny_model import (TINY_MODEL_NAME, TINY_MODEL_VERSION, model_revision,
                                                recorded_revision, shipped_model)

    path = cache_dir / f"tiny-qwen2-{TINY_MODEL_VERSION}"
    if not (path / "flock_build.json").is_file():
        shipped = shipped_model()
        if shipped is None:
            return warn(f"{TINY_MODEL_NAME} is not in {cache_dir} yet, and this package ships no intact copy",
                        "nothing to do: the first run builds it (about a minute on a CPU)")
        return ok(f"{TINY_MODEL_NAME} is not in {cache_dir} yet: the first run copies the shipped files "
                  f"(digest {recorded_revision(shipped)})")
    recorded, actual = recorded_revision(path), model_revision(path)
    if recorded != actual:
        return fail(f"the files of {TINY_MODEL_NAME} in {path} do not match their recorded digest {recorded} "
                    f"(they hash to {actual})", f"delete {path}: the next run copies it again")
    return ok(f"{TINY_MODEL_NAME} in {path}: digest {actual}, as recorded at its build")


def _disk(ctx: Context) -> Row:
    from flock_pipeline.resources import flock_home

    home = flock_home()
    probe = next(p for p in (home, *home.parents) if p.exists())
    free = shutil.disk_usage(probe).free / GIB
    want = DISK_WARN_GIB["local" if ctx.local else "real"]
    text = f"{free:.1f} GiB free on the disk of {home}"
    if free < DISK_FAIL_GIB:
        return fail(f"{text}: a run would stop half-way", f"free at least {want} GiB there, or move FLOCK_HOME")
    if free < want:
        return warn(f"{text} (less than {want} GiB)", f"free at least {want} GiB there, or move FLOCK_HOME")
    return ok(text)


def _store(ctx: Context) -> Row:
    from flock_pipeline.store import SCHEMA_VERSION, parse_url

    dialect, target = parse_url(ctx.resources["store"].store_url)
    if dialect == "duckdb":
        path = Path(target)
        if not path.exists():
            parent = next(p for p in (path.parent, *path.parents) if p.exists())
            if not os.access(parent, os.W_OK):
                return fail(f"{path} does not exist and {parent} is not writable",
                            "make it writable by this user, or set FLOCK_STORE")
            return ok(f"{path}: not created yet; the first run creates it (schema {SCHEMA_VERSION})")
        where, version = str(path), _duckdb_version(path)
    else:
        where = re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", target)
        version = _postgres_version(target)
    if version is None:
        return warn(f"{where}: in use by another process (an epoch runner?): its schema was not read",
                    "run flock doctor again when the run has finished")
    if version > SCHEMA_VERSION:
        return fail(f"{where}: schema {version}, newer than this release's {SCHEMA_VERSION}",
                    "upgrade this installation to the release that wrote it")
    if version < SCHEMA_VERSION:
        return warn(f"{where}: schema {version} of {SCHEMA_VERSION}",
                    f"nothing to do: the next command that opens it applies the {SCHEMA_VERSION - version} "
                    "missing migration(s)")
    return ok(f"{where}: reachable, schema {version} (up to date)")


def _duckdb_version(path: Path) -> int | None:
    """The DuckDB store's schema version, read without writing (None: another process holds the file)."""
    import duckdb

    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            return None
        raise
    try:
        return int(con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] or 0)
    except duckdb.CatalogException:  # made before versioning, or empty: every migration is to apply
        return 0
    finally:
        con.close()


def _postgres_version(url: str) -> int:
    """The PostgreSQL store's schema version (0 when no migration was applied yet)."""
    import psycopg

    with psycopg.connect(url, connect_timeout=10, autocommit=True) as con:
        exists = con.execute("SELECT to_regclass('schema_migrations')").fetchone()[0]
        if exists is None:
            return 0
        return int(con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] or 0)


def _dagster(ctx: Context) -> Row:
    from flock_pipeline.errors import ConfigError

    home = os.environ.get("DAGSTER_HOME", "")
    celery = os.environ.get("FLOCK_EXECUTOR", "") == "celery"
    if not home:
        if ctx.local and not celery:
            return ok("DAGSTER_HOME is not set: each command runs on a temporary instance (make dev sets it)")
        return warn("DAGSTER_HOME is not set: runs are not recorded and the sensors cannot run",
                    "set DAGSTER_HOME to a folder holding a dagster.yaml (the repository's, or "
                    "deploy/postgres/dagster.yaml for several machines)")
    if not Path(home).is_absolute() or not Path(home).is_dir():
        raise ConfigError(f"DAGSTER_HOME={home}: must be an existing folder, as an absolute path")
    config = Path(home) / "dagster.yaml"
    if not config.is_file():
        return warn(f"{home} has no dagster.yaml: Dagster's defaults (no run monitoring, no limit on the gpu pool)",
                    f"copy the repository's dagster.yaml to {home}")
    import dagster as dg

    instance = dg.DagsterInstance.get()
    try:
        storage = type(instance.run_storage).__name__
        if not instance.run_monitoring_enabled:
            return warn(f"{config}: run monitoring is off, so a dead run or one past FLOCK_EVAL_TIMEOUT_S is never "
                        "failed and retried", "set run_monitoring: enabled: true in it")
        if celery and storage.startswith("Sqlite"):
            return warn(f"{config}: {storage} with FLOCK_EXECUTOR=celery: workers on other hosts cannot reach it",
                        "use deploy/postgres/dagster.yaml (Dagster's storage on PostgreSQL)")
        return ok(f"{config}: {storage}, run monitoring on")
    finally:
        instance.dispose()


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], Row]
    needs: tuple[str, ...]
    fix: str  # what to do when it raises an error without a hint of its own


CHECKS = (
    Check("configuration", _configuration, (), "fix the variable the message names; nothing was changed"),
    Check("wallet", _wallet, ("configuration",), "check BT_WALLET_NAME, BT_WALLET_HOTKEY and BT_WALLET_PATH"),
    Check("chain", _chain, ("configuration",),
          "check FLOCK_NETWORK, FLOCK_CHAIN_ENDPOINT and FLOCK_CHAIN_FALLBACKS, and that this machine reaches them"),
    Check("registration", _registration, ("wallet", "chain"), "run flock doctor again; check the chain endpoint"),
    Check("validator permit", _permit, ("registration",), ""),
    Check("stake", _stake, ("registration",), ""),
    Check("hugging face token", _hub_token, ("configuration",), "check FLOCK_HF_ENDPOINT and HF_TOKEN"),
    Check("eval repos", _eval_repos, ("hugging face token",), "check FLOCK_HF_ENDPOINT and HF_TOKEN"),
    Check("device", _device, ("configuration",), "check FLOCK_DEVICE and the torch build"),
    Check("base model", _base_model, ("configuration",), "check FLOCK_BASE_MODEL"),
    Check("disk", _disk, (), "check FLOCK_HOME"),
    Check("store", _store, ("configuration",), "check FLOCK_STORE and that the database is running"),
    Check("dagster instance", _dagster, (), "check DAGSTER_HOME and its dagster.yaml"),
)


def _one(check: Check, ctx: Context, rows: dict[str, Row]) -> Row:
    """Run one check (or skip it, naming the earlier check it needs); an error is its row's failure."""
    from flock_pipeline.errors import ConfigError, FlockError

    blocked = next((n for n in check.needs if rows[n].status in ("fail", "skip")), None)
    if blocked is not None:
        why = "failed" if rows[blocked].status == "fail" else "was skipped"
        return Row(check.name, "skip", f"the {blocked} check {why}")
    try:
        row = check.run(ctx)
    except ConfigError as exc:
        return Row(check.name, "fail", f"configuration error: {exc}", exc.hint or check.fix, config=True)
    except FlockError as exc:
        return Row(check.name, "fail", str(exc), exc.hint or check.fix)
    except Exception as exc:  # noqa: BLE001 - a check that breaks is that check's failure, not the doctor's
        return Row(check.name, "fail", f"{type(exc).__name__}: {str(exc)[:300]}", check.fix)
    return Row(check.name, row.status, row.detail, row.fix, row.config)


def run_checks() -> list[Row]:
    """Every check, in order, on this machine's configuration (the environment)."""
    ctx = Context(network=os.environ.get("FLOCK_NETWORK", "local") or "local")
    rows: dict[str, Row] = {}
    for check in CHECKS:
        rows[check.name] = _one(check, ctx, rows)
    return list(rows.values())


def exit_code(rows: list[Row]) -> int:
    """2 when the configuration cannot be used, 1 when a check failed, else 0."""
    if any(r.status == "fail" and r.config for r in rows):
        return 2
    return 1 if any(r.status == "fail" for r in rows) else 0


def format_rows(rows: list[Row]) -> str:
    """The checks as a table (check, status, detail), each fix on the line under its row."""
    width = max(len(r.name) for r in rows)
    lines = [f"{'check'.ljust(width)}  status  detail"]
    for r in rows:
        lines.append(f"{r.name.ljust(width)}  {r.status.ljust(6)}  {r.detail}".rstrip())
        if r.fix and r.status in ("warn", "fail"):
            lines.append(f"{''.ljust(width)}  {'fix:'.ljust(6)}  {r.fix}")
    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "warn", "fail", "skip")}
    lines.append("\n" + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def cmd_doctor(args) -> int:
    from flock_pipeline.cli.common import _quiet_torch

    _quiet_torch()
    rows = run_checks()
    code = exit_code(rows)
    if args.json:
        print(json.dumps({"checks": [r.as_dict() for r in rows], "exit": code}, indent=1))
    else:
        print(format_rows(rows))
    if code == 2:
        first = next(r for r in rows if r.status == "fail" and r.config)
        print(f"flock: {first.detail} ({first.fix})", file=sys.stderr)
    return code
