"""The base model: a causal LM and its tokenizer loaded from a local directory (safetensors only, never remote code),
on the resolved device and dtype. One is loaded per process and shared by every evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BaseModel:
    """A loaded causal LM and its tokenizer, shared across evaluations in one process."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    revision: str
    device: torch.device
    path: str = ""  # the model directory (a quantized copy is loaded from it when a recipe asks for one)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


NVIDIA_DRIVER = "/proc/driver/nvidia/version"  # present when an NVIDIA kernel driver is loaded


def nvidia_driver() -> str | None:
    """The loaded NVIDIA kernel driver's version line, or None when there is none (no GPU here)."""
    try:
        with open(NVIDIA_DRIVER, encoding="utf-8") as f:
            return f.readline().strip() or "unknown version"
    except OSError:
        return None


def resolve_device(device: str) -> torch.device:
    """The device a `FLOCK_DEVICE` value names. "auto" is CUDA when torch can use it, else the CPU, except on a
    machine with an NVIDIA driver that this torch build cannot use (a CUDA build for a newer driver, say): that is
    refused with the reason (ValidatorFault) rather than training on the CPU without a word; FLOCK_DEVICE=cpu
    trains there on purpose."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        driver = nvidia_driver()
        if driver is not None:
            from flock_pipeline.errors import ValidatorFault

            build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
            raise ValidatorFault(f"FLOCK_DEVICE=auto: this machine has an NVIDIA driver ({driver}) but torch "
                                 f"{torch.__version__} is {build} that cannot use it; install a torch build for "
                                 "that driver (PyPI's CUDA 13.0 builds need driver 580 or newer), or set "
                                 "FLOCK_DEVICE=cpu to train on the CPU on purpose")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def load_base_model(path: str, *, device: str = "auto", precision: str = "auto", revision: str = "local",
                    name: str | None = None) -> BaseModel:
    """Load a causal LM from a local directory (safetensors only, never remote code). transformers' progress bar
    ("Loading weights") stays off unless FLOCK_VERBOSE is set: a validator's console is for its own lines."""
    import os

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not os.environ.get("FLOCK_VERBOSE"):
        hf_logging.disable_progress_bar()

    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False, use_safetensors=True,
                                                 attn_implementation="sdpa").to(dev)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return BaseModel(model=model, tokenizer=tokenizer, name=name or path, revision=revision, device=dev, path=path)
