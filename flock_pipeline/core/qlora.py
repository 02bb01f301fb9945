"""The live selection game's QLoRA pieces (CUDA only): a 4-bit nf4 copy of the base to train the adapter on, and
bitsandbytes' paged 8-bit AdamW.

The live validator trains on `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
bnb_4bit_compute_dtype=bfloat16)` with `optim="paged_adamw_8bit"`, then evaluates the unquantised bf16 base with the
adapter merged. Here the adapter is trained on the 4-bit copy (loaded once per process, beside the bf16 base) and its
weights are copied into a fresh adapter on the bf16 base for the merged evaluation, so the eval path is the same
one every recipe uses. bitsandbytes is imported only here (`pip install .[cuda]`).
"""

from __future__ import annotations

import torch

_QUANTIZED: dict[tuple[str, str], object] = {}  # (model path, device) -> the 4-bit BaseModel of this process


def quantized_base(base):
    """The 4-bit (nf4, bf16 compute) copy of `base`'s model, loaded once per process."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from flock_pipeline.core.model import BaseModel

    if base.device.type != "cuda":
        raise ValueError("the nf4 quantized recipe needs a CUDA device (bitsandbytes 4-bit layers)")
    key = (base.path, str(base.device))
    if key not in _QUANTIZED:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(base.path, quantization_config=config, trust_remote_code=False,
                                                     use_safetensors=True, attn_implementation="sdpa",
                                                     device_map={"": base.device.index or 0})
        from peft import prepare_model_for_kbit_training

        # what TRL's SFTTrainer does to a 4-bit model before adding LoRA: norms and other small params in fp32
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        _QUANTIZED[key] = BaseModel(model=model, tokenizer=base.tokenizer, name=base.name, revision=base.revision,
                                    device=base.device, path=base.path)
    return _QUANTIZED[key]


def paged_adamw_8bit(params, learning_rate: float, weight_decay: float):
    """bitsandbytes' paged 8-bit AdamW with the Trainer's defaults (betas 0.9 / 0.999, eps 1e-8)."""
    import bitsandbytes as bnb

    return bnb.optim.PagedAdamW8bit(params, lr=learning_rate, weight_decay=weight_decay, betas=(0.9, 0.999),
                                    eps=1e-8)
