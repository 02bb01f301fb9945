"""The release's dataset card: the Hub's YAML front matter (configs, features, license, size category, task) and a
generated summary of who contributed what, at which scores."""

from __future__ import annotations

import json

from flock_pipeline.core.corpus.policy import CorpusPolicy
from flock_pipeline.core.corpus.release import CONFIGS, DPO, JSONL_FILES, features_yaml, jsonl_text, parquet_name


# -- the dataset card ----------------------------------------------------------------------------------------------

SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


def size_category(rows: int) -> str:
    return next((label for limit, label in SIZE_CATEGORIES if rows < limit), "n>1B")


def dataset_card(records: dict[str, list[dict]], *, title: str, policy: CorpusPolicy, where: str = "",
                 note: str = "") -> str:
    """The release's README.md: YAML front matter the Hub and `datasets` read (configs -> Parquet files, features,
    license, size category, task) and a summary generated from the rows (rows per config, miners, epochs, the
    scores of the miners per competition, the policy, the base model). Deterministic: no timestamps."""
    import yaml

    counts = {c: len(records.get(c, [])) for c in CONFIGS}
    files = {c: parquet_name(c, records.get(c, [])) for c in CONFIGS}
    everything = [r for c in CONFIGS for r in records.get(c, [])]
    sizes = {c: len(jsonl_text(records.get(c, [])).encode("utf-8")) for c in CONFIGS}
    front = _front_matter(title, policy, counts, files, sizes)
    miners = sorted({r["hotkey"] for r in everything})
    epochs = sorted({int(r["epoch"]) for r in everything})
    bases = sorted({(r["base_model"], r["base_revision"]) for r in everything if r.get("base_model")})
    derived = sum(bool(r.get("derived")) for r in records.get(DPO, []))
    where = where or "path/to/this/folder"
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {title}", "",
        "Chat data from the miners of Bittensor subnet 96 (FLock OFF). A validator scores each miner's dataset by "
        "how much a LoRA fine-tune on it lowers a base model's loss on a held-out eval set; the rows of the "
        "miners that hold most of the weight are kept, with where every row came from.",
        "",
    ]
    if note:
        lines += [note, ""]
    lines += [
        "| config | rows | Parquet | JSONL |", "|---|---|---|---|",
        *(f"| `{c}` | {counts[c]} | `{files[c]}` | `{JSONL_FILES[c]}` |" for c in CONFIGS), "",
        f"- Miners: {len(miners)}",
        f"- Epochs: {_ranges(epochs) if epochs else 'none'}",
        "- Base model: " + (", ".join(f"`{m}` at `{r}`" for m, r in bases) if bases else "none recorded"),
        f"- Derived pairs (the base model's answer as `rejected`): {derived}",
        "",
        "## Load", "", *_load_section(counts, where),
        "## Fields", "",
        "- `sft`: `system`, `conversations` (alternating `user` / `assistant` turns).",
        "- `dpo`: `system`, `prompt` (turns ending with a `user` turn), `chosen` and `rejected` (one `assistant` "
        "message each), `derived` (true: `chosen` is a miner's SFT answer and `rejected` the base model's greedy "
        "answer to the same prompt).",
        "- Provenance (both): `hotkey`, `uid`, `repo`, `revision` (the miner's dataset commit), `commit_block`, "
        "`row_hash` (the row's identity), `competition`, `epoch`, `miner_weight` (the miner's weight in the epoch), "
        "`eval_loss`, `base_model`, `base_revision`, `eval_repo`, `eval_revision`.",
        "",
        *_about_sections(title, policy, epochs),
        "## Selection policy", "",
        _policy_text(policy),
        "", "```json", json.dumps(policy.to_dict(), sort_keys=True), "```", "",
        "## Scores", "",
    ]
    lines += _score_tables(everything) or ["No miner was selected."]
    return "\n".join(lines).rstrip() + "\n"


def _load_section(counts: dict[str, int], where: str) -> list[str]:
    """The card's load snippet: one line per config that holds rows."""
    if not any(counts.values()):
        return ["This release holds no rows.", ""]
    return ["```python", "from datasets import load_dataset", "",
            *(f'{c} = load_dataset("{where}", "{c}", split="train")' for c in CONFIGS if counts[c]), "```", "",
            "Only the configs that hold rows are declared. The Parquet files are named by their content, so a "
            "folder whose release changed never loads from an earlier release's cache.", ""]


def _about_sections(title: str, policy: CorpusPolicy, epochs: list[int]) -> list[str]:
    """How the release was made, its intended use and limitations, its license and a citation."""
    return [
        "## How it was made", "",
        "Miners publish chat rows (`sft`) or preference pairs (`dpo`) and commit their dataset's revision on the "
        "chain. A validator validates every row, drops exact, near and disguised copies of rows committed earlier and "
        "rows of its eval set, fine-tunes the base model with LoRA on each miner's remaining rows and scores the eval "
        "loss; the rows of the miners holding most of the weight are kept here, each once, with its provenance.", "",
        "## Intended use and limitations", "",
        "For supervised fine-tuning and preference tuning of small language models, and for studying what data "
        "moves them. The rows are the miners' own: they were checked for form, copies and eval-set leaks, not for "
        "truth, safety or bias, and they are only as good as the eval set the miners were scored on. A release's "
        "value is measured on a held-out set no miner was scored against where the validator records it (the section "
        "\"What training on this release does\", when present).", "",
        "## License and contributors", "",
        f"The release is published under `{policy.license}`. By committing a dataset to the subnet, each miner "
        "offers its rows under this license; a row's `repo` and `revision` name the dataset it came from.", "",
        "## Citation", "",
        "```bibtex", "@misc{flock_off_corpus,", f"  title  = {{{title}}},",
        "  author = {FLock OFF miners and validators (Bittensor subnet 96)},",
        f"  note   = {{Epochs {_ranges(epochs) if epochs else 'none'}}},", "}", "```", "",
    ]


def _front_matter(title: str, policy: CorpusPolicy, counts: dict[str, int], files: dict[str, str],
                  sizes: dict[str, int]) -> dict:
    """The card's YAML front matter: license, language, name, task, tags, size category, source, and the configs
    that hold rows with their content-named files, features and split sizes (rows, and bytes as JSONL: `datasets`
    reads a split without `num_bytes` as malformed and warns)."""
    declared = [c for c in CONFIGS if counts[c]]
    return {
        "license": policy.license,
        "language": ["en"],
        "pretty_name": title,
        "task_categories": ["text-generation"],
        "tags": ["sft", "dpo", "conversational", "bittensor", "flock"],
        "size_categories": [size_category(sum(counts.values()))],
        "source_datasets": ["original"],
        "configs": [{"config_name": c, "data_files": [{"split": "train", "path": files[c]}],
                     **({"default": True} if i == 0 else {})} for i, c in enumerate(declared)],
        "dataset_info": [{"config_name": c, "features": features_yaml(c),
                          "splits": [{"name": "train", "num_bytes": sizes[c], "num_examples": counts[c]}]}
                         for c in declared],
    }


def _policy_text(policy: CorpusPolicy) -> str:
    """The selection policy in one paragraph: statuses, weight coverage, the limits set, derived pairs."""
    return (f"Per competition, miners with status {', '.join(f'`{s}`' for s in policy.statuses)}, best weight first, "
            f"until they hold {policy.weight_coverage:.0%} of the competition's weight"
            + (f"; weight at least {policy.min_weight:g}" if policy.min_weight else "")
            + (f"; at most {policy.max_miners} miners" if policy.max_miners else "")
            + ". A row is kept once per config (its best-weighted copy)."
            + (f" Derived pairs: on, at most {policy.derive_max_new_tokens} new tokens per base-model answer."
               if policy.derive_dpo else ""))


def _score_tables(records: list[dict]) -> list[str]:
    groups: dict[str, dict[tuple, dict]] = {}
    for r in records:
        key = (int(r["epoch"]), r["hotkey"], int(r["uid"]))
        entry = groups.setdefault(r["competition"], {}).setdefault(key, {
            "weight": r["miner_weight"], "loss": r["eval_loss"], "sft": 0, "dpo": 0,
            "eval": (r.get("eval_repo") or "", r.get("eval_revision") or "")})
        entry["dpo" if "prompt" in r else "sft"] += 1
    lines = []
    for competition in sorted(groups):
        entries = sorted(groups[competition].items(), key=lambda kv: (-kv[0][0], -kv[1]["weight"], kv[0][2]))
        evals = sorted({e["eval"] for _, e in entries if e["eval"][0]})
        lines += [f"### {competition}", ""]
        if evals:
            lines += ["Eval set: " + ", ".join(f"`{repo}` at `{rev}`" for repo, rev in evals), ""]
        lines += ["| epoch | uid | miner | weight | eval loss | sft rows | dpo pairs |",
                  "|---|---|---|---|---|---|---|"]
        for (epoch, hotkey, uid), e in entries:
            loss = f"{e['loss']:.4f}" if e["loss"] is not None else ""
            lines.append(f"| {epoch} | {uid} | `{hotkey}` | {e['weight']:.6f} | {loss} | {e['sft']} | {e['dpo']} |")
        lines.append("")
    return lines


def _ranges(values: list[int]) -> str:
    """1, 2, 3, 5 -> "1-3, 5"."""
    parts, start = [], values[0]
    for prev, cur in zip(values, [*values[1:], None]):
        if cur is None or cur != prev + 1:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(parts)
