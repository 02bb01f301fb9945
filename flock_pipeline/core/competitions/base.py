"""What a competition (a game of the subnet) is, in one place, and what every game shares.

A competition says: which commitments enter it (`commitment_id`, the middle field of a miner's on-chain
commitment), the eval set it is scored on, the training recipe (overrides of the evaluator's recipe), how its rows are
rendered, its eligibility and duplicate rules (`plan`), its scoring rule, its cadence (every chain epoch, or UTC
daily rounds), and its `share` of the validator's weight vector. Several competitions run side by side in one epoch:
each miner is scored in the competition its commitment names, and the epoch's weight vector is the share-weighted
sum of the competitions' vectors.

Pure code: no dagster, no I/O. One module per game (`curation`, `selection`, `dpo`); `config` builds them from one
validated document.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from flock_pipeline.core.dedup import ShardPlan
from flock_pipeline.core.objectives import SFT, Objective
from flock_pipeline.core.rowformats import CHAT, RowFormat
from flock_pipeline.errors import ConfigError

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_COMMITMENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class CompetitionConfigError(ConfigError):
    """A competition definition is invalid; the message names the competition and the field."""


@dataclass(frozen=True)
class Clock:
    """The chain's block clock as UTC wall time (daily rounds are defined in UTC; the chain counts blocks).

    `genesis` is the time of block 0 and `block_seconds` the block time: on the live chain, 12 s; on the local chain,
    whatever it was seeded with. Real chains drift a little from a linear clock, so the validator anchors it at a
    recent block (see `ChainResource.clock`)."""

    genesis: datetime
    block_seconds: float

    def time_of(self, block: int) -> datetime:
        from datetime import timedelta

        return self.genesis + timedelta(seconds=block * self.block_seconds)

    def last_block_before(self, when: datetime) -> int:
        """The last block whose time is strictly before `when`."""
        seconds = (when - self.genesis).total_seconds()
        block = int(seconds // self.block_seconds)
        if self.time_of(block) >= when:
            block -= 1
        return block


@dataclass(frozen=True)
class Round:
    """Which round of a competition an epoch works on, and where it stands.

    round_id: "epoch" for per-epoch games; YYYYMMDD for daily rounds.
    phase: "scoring" (per-epoch games) | "submission" | "validation" | "rewarding".
    snapshot_block: commitments written after this block do not count for the round.
    """

    round_id: str
    phase: str
    snapshot_block: int
    opens_block: int | None = None  # first block of the submission window (daily rounds)
    note: str = ""


@dataclass(frozen=True)
class Entry:
    """One miner's submission as the eligibility rules see it (rows in file order, after validation)."""

    hotkey: str
    uid: int
    commit_block: int
    row_hashes: tuple[str, ...]  # sha256 of each used row's canonical JSON (our identity of a row)
    raw_keys: tuple[str, ...] = ()  # sha256 of each used row's JSON as written, keys sorted (the live identity)
    row_lines: tuple[int, ...] = ()  # 1-based line of each used row
    rejected_lines: tuple[tuple[int, str], ...] = ()  # (line, reason) of the rows that failed validation
    row_blocks: tuple[int, ...] | None = None  # first block this hotkey committed each row (earlier revisions)
    file_facts: Mapping[str, Any] | None = None  # what the row format says of the file as a whole
    row_texts: tuple[str, ...] | None = None  # turn contents, for near-duplicate matching
    contrast_texts: tuple[str | None, ...] | None = None  # each row's second text (`RowFormat.contrast_text`:
    # a preference pair's rejected answer)
    row_systems: tuple[str, ...] | None = None  # each row's system prompt, for near-duplicate matching


@dataclass(frozen=True)
class EvalSet:
    """The validator-held rows a competition is scored on: their row hashes, live keys and texts."""

    row_hashes: frozenset[str]
    raw_keys: frozenset[str] = frozenset()
    texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Contender:
    """An evaluated, eligible miner of one competition."""

    uid: int
    hotkey: str
    loss: float
    block: int
    coldkey: str = ""
    per_row: tuple[float, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Submission:
    """One submission of a round as a game with rule sets weighs it: who, when, its evaluated loss (None: not
    evaluated), its status before scoring, and each rule set's verdict on it (`ShardPlan.rule_views`)."""

    uid: int
    hotkey: str
    block: int
    coldkey: str = ""
    loss: float | None = None
    status: str = ""
    views: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"uid": self.uid, "hotkey": self.hotkey, "block": self.block, "coldkey": self.coldkey,
                "loss": self.loss, "status": self.status, "views": dict(self.views)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Submission:
        loss = doc.get("loss")
        return cls(int(doc["uid"]), str(doc["hotkey"]), int(doc["block"]), str(doc.get("coldkey") or ""),
                   None if loss is None else float(loss), str(doc.get("status") or ""), dict(doc.get("views") or {}))


@dataclass(frozen=True)
class ScoringContext:
    """What a scoring rule may look at besides the contenders."""

    now_block: int
    previous: Mapping[int, float]  # this competition's weights of the last epoch that computed them (uid -> weight)
    base_loss: float | None = None  # the base model's eval loss (computed only when `needs_base_loss`)
    hotkeys: Mapping[int, str] = field(default_factory=dict)  # the metagraph now: uid -> hotkey
    coldkeys: Mapping[int, str] = field(default_factory=dict)
    burn_uid: int | None = None  # the uid that receives a share nobody earned (the subnet owner's)
    round: Round | None = None
    reward: RewardState | None = None  # daily rounds: what the round history says about the reward
    submissions: tuple[Submission, ...] = ()  # every submission of the round (daily rounds), contenders included


@dataclass(frozen=True)
class RewardState:
    """Daily rounds: the reward as the round history has it (decided once per round, kept afterwards)."""

    source_round: str | None  # the round whose winner is rewarded now (None: no round decided yet)
    winner_uid: int | None  # None with a source round: that round had no winner (burn)
    decide_now: bool = False  # `source_round`'s reward time has passed and it is not decided yet: decide it now
    reused_from: str | None = None  # the current round reuses this round (its pool revision did not change)
    contenders: tuple[Contender, ...] | None = None  # with decide_now for an earlier round: its recorded
    # contenders (None: the round being decided is the current one, whose contenders are this epoch's)
    submissions: tuple[Submission, ...] | None = None  # likewise, its recorded submissions
    previous_uid: int | None = None  # with decide_now: the uid the last decided round rewards (None: burn)
    note: str | None = None  # how the source round was decided, when not by a winner (the previous weights kept)


@dataclass
class CompetitionScores:
    """A competition's outcome for one epoch.

    scores: uid -> the rule's score (win rate, curve score, 1 for a winner) for the contenders.
    weights: uid -> weight within the competition (sum 1, or empty when nobody earned anything).
    reasons: uid -> why a contender got what it got (e.g. "not below the base model's loss").
    statuses: uid -> a status other than "scored" for a contender (e.g. "no_improvement").
    explanations: uid -> in words, how a contender's score and weight came about (the comparisons and numbers).
    details: uid -> what an explanation summarises, in full (every comparison, when there are too many to list).
    extra: uid -> (hotkey, status, reason) for uids that receive weight without being contenders this epoch (the
    burn uid, the previous round's winner).
    """

    scores: dict[int, float] = field(default_factory=dict)
    weights: dict[int, float] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    statuses: dict[int, str] = field(default_factory=dict)
    extra: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    explanations: dict[int, str] = field(default_factory=dict)  # uid -> how its score and weight came about
    details: dict[int, str] = field(default_factory=dict)  # uid -> the full account its explanation summarises
    decided: tuple[str, int | None, float | None] | None = None  # (round id, winner uid, winner loss) decided now
    decided_note: str | None = None  # with decided: how, when not by a winner (the previous weights kept)
    differs: str | None = None  # the rule sets' decisions, in words, when they differ
    differs_uids: set[int] = field(default_factory=set)  # the uids the rule sets reward, when they differ
    losses: dict[int, float] = field(default_factory=dict)  # uid -> a loss the game fixed (not evaluated): such
    # a submission is scored like a contender
    note: str = ""


EVAL_POLICIES = ("head", "after_commitments")


@dataclass(frozen=True)
class Competition(ABC):
    """A game of the subnet. Subclasses are frozen dataclasses with their own rules' settings."""

    name: str
    share: float = 1.0  # of the validator's weight vector
    commitment_id: str = "1"  # commitments whose competition field is this enter this competition
    eval_repo: str = "flock/eval-atlas"  # dataset repo of the eval set (the pool, for selection)
    eval_revision: str = ""  # a full commit id; empty: the repo's head when a round opens (then recorded)
    recipe: Mapping[str, Any] = field(default_factory=dict)  # TrainRecipe overrides for this competition
    heldout_repo: str = ""  # a dataset repo no miner is scored against: what training on the corpus is worth is
    # measured there (`corpus_value`); empty: not measured
    eval_policy: str = "head"  # which eval revision an epoch is scored on: "head" (the repo's head when the epoch
    # opens, or the pinned revision) | "after_commitments" (the first revision published after the epoch's
    # commitment cut-off, which no miner can have seen; pinned: commitments made after it was seen are refused)

    kind: ClassVar[str] = ""
    row_format: ClassVar[RowFormat] = CHAT  # the rows it takes (core/rowformats.py)
    objective: ClassVar[Objective] = SFT  # what it measures after training (core/objectives.py)
    needs_base_loss: ClassVar[bool] = False  # scoring compares with the base model's eval score
    in_corpus: ClassVar[bool] = True  # its eligible rows go into the final corpus (its row format names the config)
    daily_rounds: ClassVar[bool] = False  # its rounds follow UTC wall time (the chain's block clock is read)
    burns_unearned: ClassVar[bool] = False  # a share nobody earned goes to the subnet owner's uid
    follows_moved_hotkeys: ClassVar[bool] = False  # the game itself decides where a winner's reward goes when its
    # uid changed hands (the selection game's rules); otherwise a uid now held by another hotkey gets nothing
    eval_set_role: ClassVar[str] = "held_out"  # "held_out": rows found in the eval set are leaks, dropped |
    # "pool": the eval set is the pool a submission's rows must come from

    def __post_init__(self) -> None:
        where = f"competition {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise CompetitionConfigError(f"{where}: name must be 1-32 of a-z, 0-9, '_' or '-', starting with a letter")
        if not isinstance(self.share, (int, float)) or not 0.0 < float(self.share) <= 1.0:
            raise CompetitionConfigError(f"{where}: share must be in (0, 1], got {self.share!r}")
        if not isinstance(self.commitment_id, str) or not _COMMITMENT_ID.fullmatch(self.commitment_id):
            raise CompetitionConfigError(f"{where}: commitment_id {self.commitment_id!r} is not a valid "
                                         "commitment competition field")
        if not isinstance(self.recipe, Mapping):
            raise CompetitionConfigError(f"{where}: recipe must be an object of training recipe fields")
        if self.recipe.get("objective", self.objective.name) != self.objective.name:
            raise CompetitionConfigError(f"{where}: recipe.objective must be {self.objective.name} (the game "
                                         f"scores its {self.objective.metric} with the {self.objective.name} "
                                         "objective)")
        if self.eval_policy not in EVAL_POLICIES:
            raise CompetitionConfigError(f"{where}: eval_policy must be one of {', '.join(EVAL_POLICIES)}, got "
                                         f"{self.eval_policy!r}")
        if self.eval_policy == "after_commitments" and (self.daily_rounds or self.eval_set_role != "held_out"):
            raise CompetitionConfigError(f"{where}: eval_policy after_commitments needs a held-out eval set scored "
                                         "per epoch (a daily game's pool is public by design)")
        if self.in_corpus and self.row_format.corpus_config is None:
            raise CompetitionConfigError(f"{where}: its {self.row_format.name} rows have no corpus config")

    def recipe_overrides(self) -> dict:
        """The training-recipe fields this competition sets on top of the validator's recipe (its own, and its
        objective's name)."""
        return {**self.recipe, **self.objective.recipe_overrides()}

    # -- hooks the pipeline asks instead of looking at the kind ---------------------------------------------

    def needs_row_texts(self) -> bool:
        """Whether `plan` reads the rows' texts (`Entry.row_texts`, `Entry.contrast_texts`), not only hashes."""
        return False

    def requires_weight_when_scored(self) -> bool:
        """Whether scored miners must leave some weight (the blocking check fails on an all-zero vector)."""
        return False

    def configured_burn_uid(self) -> int | None:
        """The uid a share nobody earned goes to when configured (None: the subnet owner's, when `burns_unearned`)."""
        return None

    def takes_any_commitment_id(self) -> bool:
        """Whether commitments whose competition field names no configured game enter this one (a game whose
        validators never read that field)."""
        return False

    def accepts_short_revisions(self) -> bool:
        """Whether a commitment may name its dataset revision by a 7-39 hex prefix of the commit id."""
        return False

    def config_problem(self, limits) -> str | None:
        """Why the competition cannot run under the validator's dataset limits (`DatasetLimits`), or None."""
        return None

    def rows_reason(self, rows: list) -> str | None:
        """The game's own rule on one file's valid rows taken alone (what a miner can check before publishing):
        None when they pass, else why not, in the validators' words."""
        return None

    def pairwise_verdicts(self, contenders: list[Contender]) -> dict | None:
        """The report's comparison of every pair of scored miners ((uid a, uid b) -> 1 / 0 / -1, as
        `core.scoring.pairwise_verdicts` gives), or None where the game compares no pairs."""
        return None

    # -- cadence -------------------------------------------------------------------------------------------

    def round_at(self, block: int, clock: Clock | None) -> Round:
        """The round an epoch opening at `block` works on. Default: every epoch is a round of its own."""
        return Round("epoch", "scoring", block)

    # -- eligibility and duplicates ------------------------------------------------------------------------

    @abstractmethod
    def plan(self, entries: list[Entry], eval_set: EvalSet) -> dict[str, ShardPlan]:
        """hotkey -> what the miner trains on (kept rows) or why it is ineligible."""

    # -- scoring -------------------------------------------------------------------------------------------

    @abstractmethod
    def score(self, contenders: list[Contender], context: ScoringContext) -> CompetitionScores:
        """The competition's scores and weights for one epoch."""

    def describe(self) -> dict:
        """The definition as plain data (recorded with every epoch)."""
        from dataclasses import asdict

        doc = asdict(self)
        doc["kind"] = self.kind
        doc["row_format"], doc["objective"] = self.row_format.name, self.objective.name
        return doc
