"""The validator's competitions from one document (JSON text, a preset name or `@file`), checked before any work.

Document: a JSON list of competition objects (or `{"competitions": [...]}`), each with `kind` ("curation",
"selection" or "dpo", or a kind registered in `KINDS`), a `name`, a `share` and the kind's own fields; unknown fields
are errors. Shares must sum to 1, names and commitment ids must be unique. Presets:

- "curation": the default, one curation game on every chain epoch (commitment id "1").
- "sn96": the live subnet 96 configuration: one selection game over `flock-io/flock-off-s1-competition` with the
  live QLoRA recipe (CUDA only), decided by the `live-492c7bb` rule set (what validators running that live release
  do, quirks included; `"rules": "intended"` is the game as its rules read).
- "selection-local": the selection game on the embedded network's pool (the demo), plain LoRA.
- "dpo-local": the DPO game alone (commitment id "3") on the embedded network's eval pairs `flock/eval-atlas-pairs`.
- "curation+dpo": the curation game (id "1") and the DPO game (id "3"), half of the weight each.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from flock_pipeline.core.competitions.base import Competition, CompetitionConfigError
from flock_pipeline.core.competitions.curation import CurationCompetition
from flock_pipeline.core.competitions.dpo import DpoCompetition
from flock_pipeline.core.competitions.selection import SelectionCompetition
from flock_pipeline.core.configs import build_config

KINDS: dict[str, type[Competition]] = {"curation": CurationCompetition, "selection": SelectionCompetition,
                                       "dpo": DpoCompetition}

# The live game's training recipe on top of the reference one: 4-bit nf4 base with paged 8-bit AdamW while training
# (the evaluation always runs on the unquantised base plus the merged adapter), whitespace stripped as the live
# dataset loader does.
LIVE_SELECTION_RECIPE = {"quantization": "nf4", "optimizer": "paged_adamw_8bit", "strip_whitespace": True}

PRESETS: dict[str, list[dict]] = {
    "curation": [{"kind": "curation", "name": "curation"}],
    "sn96": [{"kind": "selection", "name": "selection", "rules": "live-492c7bb", "recipe": LIVE_SELECTION_RECIPE}],
    "selection-local": [{"kind": "selection", "name": "selection", "eval_repo": "flock/selection-pool",
                         "recipe": {"strip_whitespace": True}}],
    "dpo-local": [{"kind": "dpo", "name": "dpo", "heldout_repo": "flock/heldout-atlas-pairs"}],
    "curation+dpo": [{"kind": "curation", "name": "curation", "share": 0.5},
                     {"kind": "dpo", "name": "dpo", "share": 0.5, "heldout_repo": "flock/heldout-atlas-pairs"}],
}


@dataclass(frozen=True)
class CompetitionSet:
    """The competitions a validator runs, checked as a whole."""

    competitions: tuple[Competition, ...]

    def __post_init__(self) -> None:
        if not self.competitions:
            raise CompetitionConfigError("competitions: at least one competition is needed")
        names = [c.name for c in self.competitions]
        if len(set(names)) != len(names):
            raise CompetitionConfigError(f"competitions: names must be unique, got {names}")
        ids = [c.commitment_id for c in self.competitions]
        if len(set(ids)) != len(ids):
            raise CompetitionConfigError(f"competitions: two competitions take commitment id(s) "
                                         f"{sorted({i for i in ids if ids.count(i) > 1})}; a commitment must name "
                                         "one competition")
        open_games = [c.name for c in self.competitions if c.takes_any_commitment_id()]
        if len(open_games) > 1:
            raise CompetitionConfigError(f"competitions: {', '.join(open_games)} all take commitments whatever their "
                                         "competition field; at most one game may")
        total = sum(float(c.share) for c in self.competitions)
        if abs(total - 1.0) > 1e-9:
            raise CompetitionConfigError(f"competitions: shares must sum to 1, got {total:g} "
                                         f"({', '.join(f'{c.name}={c.share}' for c in self.competitions)})")

    def __iter__(self):
        return iter(self.competitions)

    def __len__(self) -> int:
        return len(self.competitions)

    def by_name(self, name: str) -> Competition:
        for c in self.competitions:
            if c.name == name:
                return c
        raise KeyError(f"no competition named {name!r}")

    def for_commitment(self, commitment_id: str) -> Competition | None:
        """The game a commitment's competition field names; else the game that takes any (whose validators never
        read that field), if one does."""
        named = next((c for c in self.competitions if c.commitment_id == commitment_id), None)
        return named or next((c for c in self.competitions if c.takes_any_commitment_id()), None)

    def describe(self) -> list[dict]:
        return [c.describe() for c in self.competitions]


def load_document(text: str) -> Any:
    """The competitions document from its text: a preset name, `@path` to a JSON file, or JSON."""
    text = (text or "").strip()
    if text in PRESETS:
        return PRESETS[text]
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise CompetitionConfigError(f"competitions: cannot read {path}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompetitionConfigError(f"competitions: not a preset ({', '.join(PRESETS)}) and not valid JSON: "
                                     f"{exc}") from exc


def build_competitions(document: Any, defaults: Mapping[str, Mapping[str, Any]] | None = None,
                       shared: Mapping[str, Any] | None = None) -> CompetitionSet:
    """Competitions from a parsed document. Where an entry is silent, `defaults[kind]` give a kind's own field
    values (the validator settings' commitment id and eval set for curation) and `shared` give values of fields
    any kind may declare (the validator settings' `dedup` and `scoring` configs): each kind takes the ones it has."""
    if isinstance(document, Mapping) and set(document) == {"competitions"}:
        document = document["competitions"]
    if not isinstance(document, list):
        raise CompetitionConfigError("competitions: expected a list of competition objects")
    built = []
    for i, entry in enumerate(document):
        if not isinstance(entry, Mapping):
            raise CompetitionConfigError(f"competitions[{i}]: expected an object, got {type(entry).__name__}")
        kind = entry.get("kind")
        if kind not in KINDS:
            raise CompetitionConfigError(f"competitions[{i}].kind: unknown kind {kind!r}; use one of "
                                         f"{', '.join(KINDS)}")
        cls = KINDS[kind]
        declared = {f.name for f in fields(cls)}
        values = {**{k: v for k, v in (shared or {}).items() if k in declared}, **(defaults or {}).get(kind, {}),
                  **{k: v for k, v in entry.items() if k != "kind"}}
        built.append(_build(cls, values, f"competitions[{i}] ({kind})"))
    return CompetitionSet(tuple(built))


def _build(cls: type[Competition], values: dict, where: str) -> Competition:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise CompetitionConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    if "name" not in values:
        values = {**values, "name": cls.kind}
    values = dict(values)
    for name, f in known.items():  # a nested config (dedup, scoring, ...) given as an object
        if isinstance(f.default_factory, type) and is_dataclass(f.default_factory) and name in values:
            try:
                values[name] = build_config(f.default_factory, values[name], f"{where}.{name}")
            except ValueError as exc:
                raise CompetitionConfigError(str(exc)) from None
    try:
        return cls(**values)
    except CompetitionConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise CompetitionConfigError(f"{where}: {exc}") from exc
