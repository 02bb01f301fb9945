"""The curation game (the subnet's first era, Dec 2024 - Mar 2025; this product's default): miners curate their own
chat data, every chain epoch is a round.

- Eligibility: the used rows minus rows an earlier commitment already contributed (exact and near copies, every
  miner against every other) and rows of the eval set (leaks); a miner with too large a share of copies or leaks
  is ineligible (`DedupConfig`).
- Scoring (`ScoringConfig`): win rates with the earlier commitment's (1 - epsilon) advantage, softmax, blended with
  the previous epoch (or the curve / top-k modes); by default a miner must beat the base model's own eval loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from flock_pipeline.core.competitions.base import (Competition, CompetitionConfigError, CompetitionScores,
                                                   Contender, Entry, EvalSet, ScoringContext)
from flock_pipeline.core.dedup import DedupConfig, MinerRows, ShardPlan, deduplicate
from flock_pipeline.core.scoring import Contender as ScoringContender
from flock_pipeline.core.scoring import ScoringConfig, explain_scores_in_detail, score_epoch


@dataclass(frozen=True)
class CurationCompetition(Competition):
    dedup: DedupConfig = field(default_factory=DedupConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    kind: ClassVar[str] = "curation"
    in_corpus: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.dedup, DedupConfig) or not isinstance(self.scoring, ScoringConfig):
            raise CompetitionConfigError(f"competition {self.name!r}: dedup and scoring must be their configs")

    @property
    def needs_base_loss(self) -> bool:  # type: ignore[override]
        return self.scoring.require_improvement

    def needs_row_texts(self) -> bool:
        return self.dedup.near is not None  # near-duplicate matching compares the rows' texts

    def requires_weight_when_scored(self) -> bool:
        return self.scoring.mode == "win_rate"  # win rates always give a scored miner some weight (softmax)

    def pairwise_verdicts(self, contenders: list[Contender]) -> dict | None:
        """Every pair of scored miners under the game's rule (without the bootstrap's resampling: the report shows
        the plain comparison)."""
        if len(contenders) < 2:
            return None
        from dataclasses import replace

        from flock_pipeline.core.scoring import pairwise_verdicts

        config = self.scoring if self.scoring.significance == "none" else replace(self.scoring, significance="none")
        rows = [ScoringContender(c.uid, c.loss, c.block, c.per_row) for c in contenders]
        return pairwise_verdicts(rows, config, None)

    def plan(self, entries: list[Entry], eval_set: EvalSet) -> dict[str, ShardPlan]:
        miners = [MinerRows(e.hotkey, e.uid, e.commit_block, e.row_hashes, e.row_blocks, e.row_texts, e.row_systems)
                  for e in entries]
        return deduplicate(miners, eval_set.row_hashes, self.dedup, eval_set.texts)

    def score(self, contenders: list[Contender], context: ScoringContext) -> CompetitionScores:
        rows = [ScoringContender(c.uid, c.loss, c.block, c.per_row) for c in contenders]
        scores, weights = score_epoch(rows, context.previous, self.scoring, base_loss=context.base_loss,
                                      now_block=context.now_block)
        # zero weights dropped; anything else (NaN or negative from a bug) stays for validate_weights to refuse
        out = CompetitionScores(scores=scores, weights={u: w for u, w in weights.items() if w != 0})
        out.explanations, out.details = explain_scores_in_detail(
            rows, context.previous, self.scoring, scores, weights, base_loss=context.base_loss,
            now_block=context.now_block)
        base = context.base_loss
        if self.scoring.require_improvement and base is not None:
            for c in contenders:
                if c.loss >= base:
                    out.statuses[c.uid] = "no_improvement"
                    out.reasons[c.uid] = f"eval loss {c.loss:.4f} is not below the base model's {base:.4f}"
        return out
