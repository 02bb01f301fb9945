"""The training recipe: every knob of the LoRA fine-tune + eval that decides a miner's loss."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, fields, replace


_POSITIVE = ("lora_r", "lora_alpha", "epochs", "batch_size", "max_seq_len", "max_train_rows", "train_micro_tokens",
             "eval_batch_tokens", "logits_chunk")
_CHOICES = {"precision": ("auto", "bf16", "fp32"), "quantization": ("none", "nf4"),
            "optimizer": ("adamw", "paged_adamw_8bit")}


@dataclass(frozen=True)
class TrainRecipe:
    """Defaults are the live subnet's reference recipe; every field is part of the cache key (`recipe_hash`)."""

    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.1  # dropout on the LoRA input during training
    target_modules: str = "all-linear"  # peft's shorthand: every linear layer except the output head
    learning_rate: float = 2e-4  # peak learning rate (AdamW)
    warmup_steps: int = 5  # optimizer steps of linear warm-up from 0, then linear decay to 0
    epochs: int = 2  # passes over the training rows
    batch_size: int = 8  # sequences per optimizer step (reference: batch 1 x gradient accumulation 8)
    max_seq_len: int = 2048  # tokens; longer rows are truncated
    max_train_rows: int = 100  # rows; the reference validator's size cap
    max_grad_norm: float = 1.0  # gradient clipping, as the Hugging Face Trainer does by default
    weight_decay: float = 0.0  # AdamW weight decay (Trainer default)
    seed: int = 42  # seeds LoRA init, dropout and the per-epoch shuffle
    precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU) | "bf16" | "fp32"
    deterministic: bool = True  # deterministic kernels (the live validator's flags); False is faster on GPU
    train_micro_tokens: int = 16_384  # padded tokens per forward pass while training; with dropout on, the split
    # decides which dropout masks each row draws, so it is part of the cache key
    eval_batch_tokens: int = 32_768  # padded tokens per forward pass while evaluating (memory, not semantics)
    logits_chunk: int = 4_096  # labelled positions per output-head chunk: full-vocab logits never exist at once
    packing: bool = True  # sequences packed end to end (attention kept within each) instead of padded: the same
    # losses to float rounding, in about half the tokens on the live pool's row lengths
    quantization: str = "none"  # "none" | "nf4": train LoRA on a 4-bit (bitsandbytes nf4, bf16 compute) copy of
    # the base, as the live selection game does; the eval always runs on the unquantised base + merged adapter (CUDA)
    optimizer: str = "adamw"  # "adamw" (torch) | "paged_adamw_8bit" (bitsandbytes, the live game's; CUDA only)
    strip_whitespace: bool = False  # strip message contents and the system prompt (the live game's loader does)
    objective: str = "sft"  # the name of the competition's objective (core/objectives.py), set by the competition:
    # "sft": next-token loss on the assistant turns | "dpo": DPO on preference pairs, the frozen base (adapter
    # disabled) as the reference policy; the eval loss is then the mean DPO loss (ln 2: the base)
    dpo_beta: float = 0.1  # DPO's beta: how far the policy may move from the reference (TRL's default)

    def __post_init__(self) -> None:
        self._check_types()
        self._check_values()

    def _check_types(self) -> None:
        """Each field has its default's type (JSON gives strings and numbers); a number is finite."""
        for f in fields(self):
            value, default = getattr(self, f.name), f.default
            kind = bool if isinstance(default, bool) else (int, float) if isinstance(default, float) else type(default)
            if not isinstance(value, kind) or (isinstance(value, bool) and not isinstance(default, bool)):
                what = {bool: "true or false", int: "a whole number", str: "a string"}.get(kind, "a number")
                raise ValueError(f"{f.name} must be {what}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):  # JSON's NaN and Infinity parse
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")

    def _check_values(self) -> None:
        for name in _POSITIVE:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.warmup_steps < 0 or self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps, max_grad_norm and weight_decay must be >= 0")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                choices = ", ".join(allowed[:-1]) + f" or {allowed[-1]}"
                raise ValueError(f"{name} must be {choices}, got {getattr(self, name)!r}")
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", self.objective):
            raise ValueError(f"objective must be an objective's name (sft, dpo, ...), got {self.objective!r}")
        if not self.dpo_beta > 0:
            raise ValueError(f"dpo_beta must be a positive number, got {self.dpo_beta!r}")

    @property
    def needs_cuda(self) -> bool:
        """bitsandbytes' 4-bit base and paged 8-bit optimizer run on CUDA only."""
        return self.quantization != "none" or self.optimizer != "adamw"

    # Fields that change memory use or speed but not the result (within float rounding); left out of the cache key.
    _PERFORMANCE_ONLY = ("eval_batch_tokens", "logits_chunk", "packing")
    # Fields added after results were first cached: at their defaults they stay out of the hash, so earlier results
    # (which were computed exactly that way) keep their keys.
    _HASHED_UNLESS_DEFAULT = {"quantization": "none", "optimizer": "adamw", "strip_whitespace": False,
                              "objective": "sft", "dpo_beta": 0.1}

    def to_dict(self) -> dict:
        return asdict(self)

    def recipe_hash(self) -> str:
        """sha256 (first 16 hex) of the fields that decide the loss."""
        fields = {k: v for k, v in asdict(self).items() if k not in self._PERFORMANCE_ONLY
                  and not (k in self._HASHED_UNLESS_DEFAULT and v == self._HASHED_UNLESS_DEFAULT[k])}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def with_overrides(self, **overrides) -> TrainRecipe:
        """A copy with some fields changed; an unknown field or a bad value raises ValueError naming it."""
        unknown = sorted(set(overrides) - set(asdict(self)))
        if unknown:
            raise ValueError(f"unknown recipe field(s) {', '.join(unknown)}")
        return replace(self, **overrides)


# The embedded tiny model has random weights and only a few thousand parameters per layer; at the reference
# learning rate two epochs of 100 rows barely move it. This profile keeps the reference's structure (LoRA r16 on all
# linear layers, batch 8, 2 epochs, warm-up, cap) and raises the learning rate so that data quality shows in the loss.
# 5e-3 rather than 1e-2: at 1e-2 seed-to-seed noise (about 5 %) hid quality differences of 100 vs 80 rows; at 5e-3
# five quality levels came out in order under three seeds.
TINY_RECIPE = TrainRecipe(learning_rate=5e-3, max_seq_len=512)
