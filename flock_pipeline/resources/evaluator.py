"""The evaluator: which base model, on which device, with which recipe; the model is loaded once per process."""

from __future__ import annotations

import functools
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from flock_pipeline.core.objectives import SFT, Objective, Trainer
from flock_pipeline.core.recipe import TINY_RECIPE, TrainRecipe
from flock_pipeline.core.tiny_model import TINY_MODEL_NAME, TINY_MODEL_VERSION, ensure_tiny_model, model_revision

if TYPE_CHECKING:  # torch is imported only when a model is actually used (sensors and the UI never need it)
    from flock_pipeline.core.evaluator import BaseModel, EvalOutcome

_MODELS: dict[tuple, BaseModel] = {}  # one loaded base model per (path, device, precision) per process
_LOCK = threading.Lock()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.lru_cache(maxsize=1)
def _library_versions() -> dict[str, str]:
    """The versions of the libraries that compute a loss (part of every cache key), read once per process."""
    from importlib.metadata import version

    return {lib: version(lib) for lib in ("torch", "transformers", "peft")}


class EvaluatorResource(dg.ConfigurableResource):
    """LoRA trainer + eval-loss evaluator.

    base_model: "tiny" (the embedded model, built offline on first use) or a local model directory.
    recipe: JSON object of TrainRecipe overrides, e.g. '{"learning_rate": 1e-4}'.
    """

    base_model: str = "tiny"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    recipe: str = "{}"
    cache_dir: str = ".flock/models"
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    timeout_s: int = 0  # an evaluation run's time limit (the sensor's `dagster/max_runtime` tag); 0: none
    run_tags: str = "{}"  # JSON object of extra tags on evaluation runs, e.g. a Kubernetes GPU request
    multi_lora: str = "auto"  # train a batch's miners side by side (core/multilora.py): auto (on CUDA) | on | off
    multi_lora_max: int = 8  # adapters trained together in one pass

    def check_multi_lora(self) -> None:
        """ValueError unless `multi_lora` is auto, on or off (checked without importing torch)."""
        if self.multi_lora not in ("auto", "on", "off"):
            raise ValueError(f"multi_lora must be auto, on or off, got {self.multi_lora!r}")

    def multi_lora_enabled(self) -> bool:
        """Whether evaluations train through multi-LoRA: "on", or "auto" on a CUDA device. On CUDA the adapters'
        dropout masks come from per-row device generators (so a result never depends on the batch), which the
        single-miner trainer's torch dropout does not use: the provenance tells the two apart."""
        self.check_multi_lora()
        if self.multi_lora == "auto":
            from flock_pipeline.core.evaluator import resolve_device

            return resolve_device(self.device).type == "cuda"
        return self.multi_lora == "on"

    def evaluation_run_tags(self) -> dict[str, str]:
        """The extra tags of an evaluation run; a non-string value is written as JSON (Dagster tags are text)."""
        import json

        tags = json.loads(self.run_tags or "{}")
        return {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in tags.items()}

    def train_recipe(self, overrides: dict | None = None) -> TrainRecipe:
        """The recipe: the model's default (the tiny profile for the embedded model), then `recipe`, then a
        competition's `overrides`."""
        base = TINY_RECIPE if self.base_model == "tiny" else TrainRecipe()
        configured = json.loads(self.recipe or "{}")
        if not isinstance(configured, dict):
            raise ValueError("recipe must be a JSON object of TrainRecipe fields")
        if "objective" in configured:
            raise ValueError("objective is not a validator-wide setting: each competition trains with its own "
                             "objective (drop it from FLOCK_RECIPE)")
        return base.with_overrides(**{**configured, **(overrides or {})})

    def check_recipe(self, overrides: dict | None = None, device: bool = True) -> TrainRecipe:
        """The recipe, refused with ValueError when a field is wrong or (with `device`) when it cannot run on the
        configured device (4-bit base and paged 8-bit optimizer need CUDA)."""
        recipe = self.train_recipe(overrides)
        if device and recipe.needs_cuda:
            what = ", ".join(f"{k}={getattr(recipe, k)}" for k in ("quantization", "optimizer")
                             if getattr(recipe, k) != TrainRecipe.__dataclass_fields__[k].default)
            if self.device == "cpu" or (self.device == "auto" and not _cuda_available()):
                raise ValueError(f"the recipe's {what} runs on CUDA only (bitsandbytes); this validator's device is "
                                 f"{self.device!r}" + ("" if self.device == "cpu" else " and no CUDA device is "
                                                       "visible") + ": use the plain LoRA recipe or a GPU")
        return recipe

    def model_path(self) -> Path:
        if self.base_model == "tiny":
            return ensure_tiny_model(Path(self.cache_dir))
        path = Path(self.base_model)
        if not path.is_dir():
            raise ValueError(f"base model {self.base_model!r} is not a local model directory")
        return path

    def verified_model_path(self) -> Path:
        """The model directory after checking the embedded model's files against the digest its build recorded
        (a truncated or altered file is a validator fault, never a different model under the same name)."""
        from flock_pipeline.core.tiny_model import recorded_revision
        from flock_pipeline.errors import ValidatorFault

        path = self.model_path()
        recorded = recorded_revision(path)
        if recorded is not None and recorded != model_revision(path):
            raise ValidatorFault(f"the embedded model's files in {path} do not match their recorded digest "
                                 "(corrupted or changed): delete that directory to rebuild it")
        return path

    def model_name(self) -> str:
        return TINY_MODEL_NAME if self.base_model == "tiny" else self.base_model

    def load(self) -> BaseModel:
        import torch

        from flock_pipeline.core import evaluator as core_eval

        if self.threads:
            torch.set_num_threads(self.threads)
        if self.train_recipe().deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # needed by deterministic cuBLAS
        path = self.model_path()
        key = (str(path), self.device, self.train_recipe().precision)
        with _LOCK:
            if key not in _MODELS:
                _MODELS[key] = core_eval.load_base_model(str(path), device=self.device,
                                                         precision=self.train_recipe().precision,
                                                         revision=model_revision(path), name=self.model_name())
            return _MODELS[key]

    def trainer(self, finished=None) -> Trainer:
        """How objectives may train in this process: under the shared model's lock, with multi-LoRA when it is on;
        `finished(index, outcome)` is told each set's outcome as soon as it is known."""
        from flock_pipeline.core.stop import stopped

        return Trainer(lock=_LOCK, multi_lora=self.multi_lora_max if self.multi_lora_enabled() else 0,
                       stopped=stopped, **({"finished": finished} if finished is not None else {}))

    def evaluate(self, train_rows: list, eval_rows: list, on_step=None, recipe: dict | None = None,
                 objective: Objective = SFT) -> EvalOutcome:
        """Train on `train_rows` and score the result on `eval_rows` with the objective (the recipe with a
        competition's `recipe` overrides)."""
        base = self.load()
        recipe_ = self.train_recipe(recipe)
        with _LOCK:  # one training at a time per process: the base model is shared
            return objective.evaluate(base, train_rows, eval_rows, recipe_, on_step)

    def evaluate_many(self, train_sets: list[list], eval_rows: list, recipe: dict | None = None,
                      objective: Objective = SFT, finished=None) -> list[EvalOutcome | Exception]:
        """One outcome per training set (or the exception its evaluation raised), on the same eval rows, recipe and
        objective. With multi-LoRA on (SFT), up to `multi_lora_max` sets train side by side; one miner's failure is
        its own. `finished(index, outcome)` is told each outcome as soon as it is known."""
        recipe_ = self.train_recipe(recipe)
        base = self.load()
        return objective.evaluate_many(base, train_sets, eval_rows, recipe_, self.trainer(finished))

    def base_loss(self, eval_rows: list, recipe: dict | None = None, objective: Objective = SFT) -> EvalOutcome:
        """The base model's own score on the eval rows under the objective (SFT: its loss; DPO: ln 2 per pair,
        computed)."""
        base = self.load()
        recipe_ = self.train_recipe(recipe)
        with _LOCK:
            return objective.base_outcome(base, eval_rows, recipe_)

    def provenance(self, build: bool = True, recipe: dict | None = None) -> dict | None:
        """What a score depends on besides the data: model + revision, recipe, device kind and dtype, versions.

        The recipe hash here covers the resolved device kind and dtype too ("auto" is bf16 on GPU, fp32 on CPU),
        so a CPU result is never reused for a GPU validator or the other way round. With build=False (sensors)
        the embedded model is not built: None when it does not exist yet.
        """
        import hashlib

        from flock_pipeline.core.evaluator import resolve_device, resolve_dtype

        if not build and self.base_model == "tiny" and not (
                Path(self.cache_dir) / f"tiny-qwen2-{TINY_MODEL_VERSION}" / "flock_build.json").exists():
            return None
        path = self.model_path()
        recipe = self.train_recipe(recipe)
        device = resolve_device(self.device)
        dtype = str(resolve_dtype(recipe.precision, device)).removeprefix("torch.")
        trainer = "|multi-lora" if device.type == "cuda" and self.multi_lora_enabled() else ""
        # bf16 and nf4 recipes train and evaluate under bf16 autocast (the live Trainer's bf16=True); results from
        # before that keep other keys
        mixed = "|bf16-autocast" if dtype == "bfloat16" or recipe.quantization == "nf4" else ""
        numerics = hashlib.sha256(f"{recipe.recipe_hash()}|{device.type}|{dtype}{trainer}{mixed}".encode()
                                  ).hexdigest()[:16]
        return {"base_model": self.model_name(), "base_revision": model_revision(path),
                "recipe_hash": numerics, "recipe": recipe.to_dict(), "device": device.type, "dtype": dtype,
                "versions": dict(_library_versions())}
