"""Derived pairs' rejected side: the base model's own greedy answers to single-turn prompts, generated once and cached
in a JSONL file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from flock_pipeline.core.corpus.release import FILE_MODE, make_dir
from flock_pipeline.core.schema import ChatRow


# -- derived pairs: the base model's answers, cached ---------------------------------------------------------------


class BaseAnswerCache:
    """The base model's greedy answers, one JSON object per line of a file (`corpus_dir/base-answers.jsonl`):
    {"row_hash", "base_model", "base_revision", "max_new_tokens", "answer"}; `answer` null: the prompt did not fit
    the model (not asked again). Appended under an exclusive lock; a torn last line is ignored."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @staticmethod
    def key(row_hash: str, base_model: str, base_revision: str, max_new_tokens: int) -> tuple:
        return row_hash, base_model, base_revision, int(max_new_tokens)

    def load(self) -> dict[tuple, str | None]:
        out: dict[tuple, str | None] = {}
        if not self.path.is_file():
            return out
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
                out[self.key(e["row_hash"], e["base_model"], e["base_revision"], e["max_new_tokens"])] = e["answer"]
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def add(self, entries: dict[tuple, str | None]) -> None:
        import fcntl

        if not entries:
            return
        make_dir(self.path.parent)
        text = "".join(json.dumps({"row_hash": k[0], "base_model": k[1], "base_revision": k[2],
                                   "max_new_tokens": k[3], "answer": v}, ensure_ascii=False, sort_keys=True) + "\n"
                       for k, v in entries.items())
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size and not _ends_with_newline(fd):
                os.write(fd, b"\n")  # after a torn line
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)


def _ends_with_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return os.pread(fd, 1, size - 1) == b"\n"


def single_turn(row: ChatRow) -> bool:
    """A row with one user turn and its answer (the rows derived pairs are made from)."""
    return len(row.turns) == 2 and row.turns[0].role == "user" and row.turns[1].role == "assistant"


def greedy_answers(base, prompts: list[ChatRow], max_new_tokens: int, batch_size: int = 8) -> list[str | None]:
    """The model's greedy answer to each prompt (a chat row whose turns end with a user turn), rendered as ChatML
    up to "<|im_start|>assistant\\n" and decoded up to <|im_end|>; None for a prompt that does not fit the model's
    context with `max_new_tokens` more. `base` is a loaded `BaseModel` (.model, .tokenizer, .device)."""
    import torch

    from flock_pipeline.core.chat import IM_END, render_segments

    tokenizer, model = base.tokenizer, base.model
    stop = tokenizer.convert_tokens_to_ids(IM_END)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    encoded = []
    for prompt in prompts:
        ids: list[int] = []
        for text, _ in render_segments(prompt):
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        encoded.append(ids if context is None or len(ids) + max_new_tokens <= context else None)
    answers: list[str | None] = [None] * len(prompts)
    todo = [i for i, ids in enumerate(encoded) if ids]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            width = max(len(encoded[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, i in enumerate(chunk):  # left padding: every prompt ends where generation starts
                input_ids[j, width - len(encoded[i]):] = torch.tensor(encoded[i], dtype=torch.long)
                mask[j, width - len(encoded[i]):] = 1
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids.to(base.device), attention_mask=mask.to(base.device),
                                     max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                     pad_token_id=pad, eos_token_id=stop, temperature=None, top_p=None, top_k=None)
            for j, i in enumerate(chunk):
                new = out[j, width:].tolist()
                if stop in new:
                    new = new[:new.index(stop)]
                answers[i] = tokenizer.decode(new, skip_special_tokens=True)
    finally:
        model.train(was_training)
    return answers
