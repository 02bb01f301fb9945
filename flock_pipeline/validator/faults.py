"""The line between the validator's faults and the miners'.

A failure caused by the validator's own environment (the device is not there, the base model is missing or its
files do not match their digest, the eval set cannot be loaded, out of memory at the smallest batch, a library that
cannot be imported) is a `ValidatorFault`: the stage stops with an operator error and nothing is recorded against
any miner, so after the fix the next run scores everyone normally. Only failures caused by a miner's data count
against that miner.
"""

from __future__ import annotations

import threading

from flock_pipeline.core.rowformats import CHAT, RowFormat
from flock_pipeline.errors import ValidatorFault
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.hub import HubError, HubResource
from flock_pipeline.validator.eval_sets import load_eval_rows

__all__ = ["ValidatorFault", "check_device", "is_validator_fault", "preflight"]


# Messages of exceptions that come from the machine, not from a miner's rows (torch, CUDA, safetensors, the loader).
_ENVIRONMENT_MARKERS = ("cuda", "cudnn", "cublas", "out of memory", "torch not compiled", "no kernel image",
                        "device-side assert", "safetensors", "header too large", "error while deserializing",
                        "unable to load weights", "no such file or directory")


def is_validator_fault(exc: BaseException) -> bool:
    """Did `exc` come from the validator's environment rather than the miner's data?"""
    if isinstance(exc, (ValidatorFault, ImportError, MemoryError, OSError)):
        return True
    if isinstance(exc, ValueError):  # our evaluator's refusals of the rows themselves ("no training rows", ...)
        return False
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(marker in text for marker in _ENVIRONMENT_MARKERS)


_CHECKED: set[tuple] = set()  # (device, model identity, eval revision) checked in this process
_LOCK = threading.Lock()


def preflight(evaluator: EvaluatorResource, hub: HubResource, eval_repo: str, eval_revision: str,
              recipe: dict | None = None, row_format: RowFormat = CHAT) -> None:
    """Check the device, the base model (its files against their digest, and that it loads) and the eval set before
    the first miner is trained; raises ValidatorFault with what to fix. Once per process per configuration."""
    key = (evaluator.device, evaluator.base_model, evaluator.cache_dir, eval_repo, eval_revision, row_format,
           repr(sorted((recipe or {}).items())))
    with _LOCK:
        if key in _CHECKED:
            return
    check_device(evaluator.device)
    try:
        evaluator.verified_model_path()
        evaluator.load()
    except ValidatorFault:
        raise
    except Exception as exc:
        raise ValidatorFault(f"the base model {evaluator.base_model!r} cannot be loaded: {type(exc).__name__}: "
                             f"{exc} (fix FLOCK_BASE_MODEL or the model files; for the embedded model delete its "
                             "directory under $FLOCK_HOME/models to rebuild it)") from exc
    try:
        rows = load_eval_rows(hub, eval_repo, eval_revision, row_format)
    except (HubError, RuntimeError, ValueError) as exc:
        raise ValidatorFault(f"the eval set {eval_repo}@{eval_revision} cannot be loaded: {exc}") from exc
    if not rows:
        raise ValidatorFault(f"the eval set {eval_repo}@{eval_revision} has no rows")
    with _LOCK:
        _CHECKED.add(key)


def check_device(device: str) -> None:
    """The configured device exists on this machine (a CPU build of torch has no CUDA)."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        built = "a CPU-only build of torch" if torch.version.cuda is None else "no visible CUDA device"
        raise ValidatorFault(f"FLOCK_DEVICE={device} but this machine has {built}: install a CUDA build of torch "
                             "(make install TORCH_SPEC=...) or set FLOCK_DEVICE=cpu / auto")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ValidatorFault(f"FLOCK_DEVICE={device} but only {torch.cuda.device_count()} CUDA device(s) exist")
