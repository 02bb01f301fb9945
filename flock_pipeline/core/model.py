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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
