"""The embedded tiny base model: a Qwen2-architecture causal LM with a byte-level BPE tokenizer and ChatML.

Nothing can be downloaded here, so the default base model is made offline: the tokenizer's merges are learned from
the synthetic corpus, the weights are a seeded random initialisation pre-trained briefly on another atlas. That
build is reproducible on one machine but not across machines (300 optimizer steps of float32 arithmetic whose
rounding depends on the CPU's vector instructions), so the built files ship with the package
(`flock_pipeline/embedded/tiny-qwen2-v1/`, 472 KB, their digest recorded in its `flock_build.json`): every machine
copies the same model into its cache and gets the same losses. `python -m flock_pipeline.core.tiny_model build DIR`
rebuilds it (to ship a new version: bump TINY_MODEL_VERSION, build into `flock_pipeline/embedded/`, regenerate the
README's numbers with `scripts/readme_numbers.py`). Copies and builds are written atomically (a temporary
directory, then rename) under a file lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from flock_pipeline.core.chat import IM_END, IM_START
from flock_pipeline.core.synthetic import tokenizer_corpus

TINY_MODEL_NAME = "flock/tiny-qwen2"
TINY_MODEL_VERSION = "v1"  # bump when the build below changes: it names the cache directory
SPECIAL_TOKENS = ["<|endoftext|>", IM_START, IM_END]
VOCAB_SIZE = 512  # tokens, including the 256 byte tokens and the three special ones
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MODEL_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, max_position_embeddings=2048, rope_theta=1e6, tie_word_embeddings=True)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE, model_max_length=MODEL_SHAPE["max_position_embeddings"])


PRETRAIN_STEPS = 300  # optimizer steps of full-weight pre-training (about 15 s on one CPU core)
PRETRAIN_BATCH = 16  # rows per step
PRETRAIN_LR = 3e-3


def pretrain(model, tokenizer, seed: int) -> None:
    """Teach the random model ChatML and the atlas' wording on a *different* atlas (seed 1000 + seed).

    A base model that already speaks the format makes LoRA fine-tuning about facts, as it is for the real base
    model; it knows nothing of the eval atlas' countries, so only miners' data can teach those.
    """
    import random

    import torch

    from flock_pipeline.core.chat import tokenize_row
    from flock_pipeline.core.evaluator import _pad, token_losses
    from flock_pipeline.core.synthetic import eval_rows, honest_rows, make_atlas, off_domain_rows

    other = make_atlas(seed=1000 + seed)
    rows = honest_rows(other, 400, seed) + off_domain_rows(100, seed) + eval_rows(other)
    tokenized = [tokenize_row(r, tokenizer, 256) for r in rows]
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR)
    rng = random.Random(seed)
    model.train()
    for _ in range(PRETRAIN_STEPS):
        batch = rng.sample(tokenized, PRETRAIN_BATCH)
        ids, labels, mask = _pad(batch, tokenizer.pad_token_id, torch.device("cpu"))
        sums, counts = token_losses(model, ids, labels, mask, 4096, recompute=False)
        loss = sums.sum() / counts.sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def build_tiny_model(dest: Path, seed: int = 0) -> Path:
    """Build the tokenizer and the seeded model into `dest` (atomically); returns `dest`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=dest.parent))
    try:
        tokenizer = build_tokenizer()
        tokenizer.save_pretrained(tmp)
        config = Qwen2Config(vocab_size=len(tokenizer), bos_token_id=None,
                             eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
                             pad_token_id=tokenizer.pad_token_id, **MODEL_SHAPE)
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
        pretrain(model, tokenizer, seed)
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "flock_build.json").write_text(json.dumps({"name": TINY_MODEL_NAME, "version": TINY_MODEL_VERSION,
                                                          "seed": seed, "revision": _dir_digest(tmp)}))
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished the same build first; theirs is identical
            if not (dest / "flock_build.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


SHIPPED = Path(__file__).resolve().parents[1] / "embedded" / f"tiny-qwen2-{TINY_MODEL_VERSION}"


def shipped_model() -> Path | None:
    """The model files shipped with the package, when they are there and match the digest recorded with them."""
    if not (SHIPPED / "flock_build.json").is_file():
        return None
    return SHIPPED if recorded_revision(SHIPPED) == _dir_digest(SHIPPED) else None


def copy_tiny_model(source: Path, dest: Path) -> Path:
    """Copy a built model directory into `dest` atomically (files readable by everyone); returns `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=dest.parent))
    try:
        for f in sorted(Path(source).iterdir()):
            if f.is_file():
                shutil.copyfile(f, tmp / f.name)
                os.chmod(tmp / f.name, 0o644)
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished first; its copy is identical
            if not (dest / "flock_build.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_tiny_model(cache_dir: Path) -> Path:
    """The cached tiny model directory, made on first use by one process under a file lock (the others wait for
    it): a copy of the shipped files, or a build where the package has none (or a damaged one)."""
    dest = Path(cache_dir) / f"tiny-qwen2-{TINY_MODEL_VERSION}"
    if (dest / "flock_build.json").exists():
        return dest
    import fcntl

    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "a") as lock:  # runs started together make it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (dest / "flock_build.json").exists():
                shipped = shipped_model()
                if shipped is not None:
                    copy_tiny_model(shipped, dest)
                else:
                    build_tiny_model(dest)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return dest


_DIGESTS: dict[tuple, str] = {}  # (path, (name, size, mtime_ns) of every file) -> digest, per process


def model_revision(path: Path) -> str:
    """The content digest of a local model directory: sha256 over its files' names and bytes (the first 40 hex).

    Computed from the files themselves, never taken from a recorded claim, so a changed or corrupted file changes
    the revision (and every cache key made with it). Cached per process by each file's size and mtime, so an
    unchanged directory is read once."""
    path = Path(path)
    stamp = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir()
                         if f.is_file() and f.name != "flock_build.json"))
    key = (str(path.resolve()), stamp)
    if key not in _DIGESTS:
        _DIGESTS[key] = _dir_digest(path)
    return _DIGESTS[key]


def recorded_revision(path: Path) -> str | None:
    """The digest the embedded model's build recorded (None for other model directories)."""
    info = Path(path) / "flock_build.json"
    try:
        return json.loads(info.read_text())["revision"] if info.exists() else None
    except (ValueError, KeyError, TypeError):
        return "unreadable build record"


def _dir_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and p.name != "flock_build.json"):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:40]


def main(argv: list[str] | None = None) -> int:
    """`python -m flock_pipeline.core.tiny_model build DIR`: build the embedded model from scratch into DIR (and
    print its digest); `... check`: whether the shipped files match their recorded digest."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flock_pipeline.core.tiny_model", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the model into DIR (it must not exist)")
    build.add_argument("dir")
    sub.add_parser("check", help="check the shipped model's files against their recorded digest")
    args = parser.parse_args(argv)
    if args.command == "build":
        import torch

        torch.set_num_threads(1)
        out = build_tiny_model(Path(args.dir))
        print(f"{out}: revision {recorded_revision(out)}")
        return 0
    ok = shipped_model() is not None
    print(f"{SHIPPED}: " + ("ok, revision " + str(recorded_revision(SHIPPED)) if ok else "missing or damaged"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
