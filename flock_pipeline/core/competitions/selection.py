"""The selection game: the live SN96 competition since February 2026 (facts from FLock-io/FLock-subnet, HEAD of
2026-02-24; our own code).

- A daily round, id YYYYMMDD (UTC): submission 12:00-12:30, validation 12:30 to 11:30 the next day, rewarding
  11:30-12:00. A round is new only when the pool repo's revision changed since the previous round; otherwise the
  previous round's winner keeps the reward and nothing is evaluated.
- The pool (a dataset repo, live `flock-io/flock-off-s1-competition`, its head resolved when a round opens) is both
  what miners select from and the eval set.
- A submission is the first `selection_size` (100) rows of the miner's data.jsonl. Every one of them must be a pool
  row, compared as the JSON the miner wrote with keys sorted; distinct rows only (the live check compares the size of
  the set of the submission's rows that are in the pool with the number of rows).
- Two submissions sharing more than `duplicate_threshold` (33) rows: the later commitment (block, then uid) is
  ineligible. The earlier one keeps its standing whatever later miners do.
- Training: the live recipe trains LoRA on a 4-bit (nf4) base with paged 8-bit AdamW and evaluates the bf16 base plus
  the merged adapter over the whole pool; message contents and the system prompt are stripped of surrounding
  whitespace first.
- Winner: k = max(floor(top_fraction x number of uids in the metagraph), 1); among the k lowest eval losses, the
  earliest commitment (block, then uid) gets weight 1, everyone else 0. A winner whose uid now holds another hotkey
  is found again by its hotkey, then by its coldkey, then the next candidate by commitment order among the k, then
  by loss; with no candidate left the uid keeps it (as the live validator does). Nobody scored (or a fresh start):
  all weight to the subnet owner's uid (burn).

That is the game as its rules read: the rule set `intended`. A validator earns only while its weights agree with the
stake majority's, which runs the live code, quirks and failures included; the rule set `live-492c7bb` reproduces what
validators running FLock-subnet at commit 492c7bb do (facts from its `neurons/validator.py`,
`flockoff/validator/validator_utils.py`, `trainer.py`, `dataset.py` and `database.py`): each fact is a field of
`RuleSet` and one named rule below (`live_winner`, `unloadable`, `training_failure`, `copies`, `commitment_order`,
and the game's `takes_any_commitment_id` / `accepts_short_revisions`). The game decides under its `rules` and
records every rule set's verdict on each submission, so that where another rule set decides a round differently
the report says so.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta, UTC
from typing import ClassVar

from flock_pipeline.core.competitions.base import (Clock, Competition, CompetitionConfigError, CompetitionScores,
                                                   Contender, Entry, EvalSet, RewardState, Round, ScoringContext)
from flock_pipeline.core.dedup import ShardPlan
from flock_pipeline.core.rowformats import RAW_JSON, RowFormat
from flock_pipeline.core.textnorm import fold

MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True)
class SelectionCompetition(Competition):
    eval_repo: str = "flock-io/flock-off-s1-competition"
    selection_size: int = 100  # rows of a submission (the first ones of its file)
    duplicate_threshold: int = 33  # more shared rows than this with an earlier submission: a duplicate
    top_fraction: float = 0.05  # of the metagraph's uids: the best k by loss, among which the earliest wins
    burn_uid: int | None = None  # None: the subnet owner's uid, read from the chain
    submission_start_min: int = 12 * 60  # minutes after 00:00 UTC
    submission_minutes: int = 30
    reward_start_min: int = 11 * 60 + 30  # minutes after 00:00 UTC, on the day after the submission window
    reuse_when_pool_unchanged: bool = True
    rules: str = "intended"  # the rule set that decides: "intended" (the game as its rules read) or a live release's
    benchmark_loss: float = 2.60  # the live rule set's loss for a submission whose training fails (live `bench`)

    kind: ClassVar[str] = "selection"
    row_format: ClassVar[RowFormat] = RAW_JSON  # any JSON object counts as a loaded row; pool rows are chat rows
    needs_base_loss: ClassVar[bool] = False
    in_corpus: ClassVar[bool] = False  # its rows are the published pool's own rows
    daily_rounds: ClassVar[bool] = True
    burns_unearned: ClassVar[bool] = True  # nobody scored, or a fresh start: all weight to the owner's uid
    follows_moved_hotkeys: ClassVar[bool] = True  # a winner's reward follows its hotkey, then its coldkey
    eval_set_role: ClassVar[str] = "pool"

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"competition {self.name!r}"
        self._check_sizes(where)
        self._check_windows(where)
        if self.rules not in RULE_SETS:
            raise CompetitionConfigError(f"{where}: rules must be one of {', '.join(RULE_SETS)}, got {self.rules!r}")
        if isinstance(self.benchmark_loss, bool) or not isinstance(self.benchmark_loss, (int, float)) \
                or not math.isfinite(self.benchmark_loss) or self.benchmark_loss <= 0:
            raise CompetitionConfigError(f"{where}: benchmark_loss must be a positive number, got "
                                         f"{self.benchmark_loss!r}")

    def _check_sizes(self, where: str) -> None:
        for name in ("selection_size", "submission_minutes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise CompetitionConfigError(f"{where}: {name} must be a positive whole number, got {value!r}")
        if isinstance(self.duplicate_threshold, bool) or not isinstance(self.duplicate_threshold, int) \
                or self.duplicate_threshold < 0:
            raise CompetitionConfigError(f"{where}: duplicate_threshold must be a whole number >= 0")
        if not isinstance(self.top_fraction, (int, float)) or not 0 < self.top_fraction <= 1:
            raise CompetitionConfigError(f"{where}: top_fraction must be in (0, 1], got {self.top_fraction!r}")
        if self.burn_uid is not None and (not isinstance(self.burn_uid, int) or self.burn_uid < 0):
            raise CompetitionConfigError(f"{where}: burn_uid must be a uid (>= 0) or null for the owner's uid")

    def _check_windows(self, where: str) -> None:
        for name in ("submission_start_min", "reward_start_min"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < MINUTES_PER_DAY:
                raise CompetitionConfigError(f"{where}: {name} must be minutes after midnight UTC (0-1439)")
        validation = (self.reward_start_min + MINUTES_PER_DAY) - (self.submission_start_min + self.submission_minutes)
        if not 0 < validation < MINUTES_PER_DAY:
            raise CompetitionConfigError(f"{where}: the windows leave no validation time (submission "
                                         f"{self.submission_start_min}+{self.submission_minutes} min, reward "
                                         f"{self.reward_start_min} min the next day)")
        if self.reward_start_min >= self.submission_start_min:
            raise CompetitionConfigError(f"{where}: rewarding must start before the next submission window")

    def configured_burn_uid(self) -> int | None:
        return self.burn_uid

    def config_problem(self, limits) -> str | None:
        if self.selection_size > limits.max_rows_used:
            return (f"selection_size {self.selection_size} is more than max_rows_used {limits.max_rows_used} (the "
                    "rows a validator reads of a file)")
        return None

    # -- cadence -------------------------------------------------------------------------------------------

    def round_day(self, when: datetime) -> datetime:
        """The UTC date (as midnight) of the round running at `when`: the latest submission start at or before."""
        start = datetime.combine(when.date(), time(0), tzinfo=UTC) + timedelta(
            minutes=self.submission_start_min)
        return (start if when >= start else start - timedelta(days=1)) - timedelta(minutes=self.submission_start_min)

    def windows(self, day: datetime) -> tuple[datetime, datetime, datetime]:
        """(submission opens, submission closes = validation starts, rewarding starts) of the round of `day`."""
        opens = day + timedelta(minutes=self.submission_start_min)
        closes = opens + timedelta(minutes=self.submission_minutes)
        reward = day + timedelta(days=1, minutes=self.reward_start_min)
        return opens, closes, reward

    def phase_at(self, when: datetime) -> tuple[str, str]:
        """(round id YYYYMMDD, phase) at `when`."""
        day = self.round_day(when)
        _, closes, reward = self.windows(day)
        phase = "submission" if when < closes else "validation" if when < reward else "rewarding"
        return day.strftime("%Y%m%d"), phase

    def round_at(self, block: int, clock: Clock | None) -> Round:
        if clock is None:
            raise CompetitionConfigError(f"competition {self.name!r}: daily rounds need the chain's block clock")
        when = clock.time_of(block)
        round_id, phase = self.phase_at(when)
        opens, closes, _ = self.windows(self.round_day(when))
        close_block = clock.last_block_before(closes)
        snapshot = min(block, close_block)
        return Round(round_id, phase, snapshot, opens_block=clock.last_block_before(opens) + 1,
                     note=f"round {round_id}, {phase} phase at {when:%Y-%m-%d %H:%M} UTC; submissions close after "
                          f"block {close_block}")

    # -- eligibility and duplicates ------------------------------------------------------------------------

    @property
    def rule_set(self) -> RuleSet:
        return RULE_SETS[self.rules]

    def other_rule_sets(self) -> list[RuleSet]:
        """The rule sets the operator sees beside the one that decides (where they decide otherwise)."""
        return [r for name, r in RULE_SETS.items() if name != self.rules]

    def takes_any_commitment_id(self) -> bool:
        return not self.rule_set.reads_competition_id

    def accepts_short_revisions(self) -> bool:
        return self.rule_set.short_revisions

    def submission_rows(self, entry: Entry) -> tuple[list[int], str | None]:
        """Indices (into the used rows) of the submission's rows, or the reason it is not a submission.

        The submission is the first `selection_size` non-blank lines of the file: a line among them that does not
        load cannot be a pool row."""
        lines = sorted([(line, i) for i, line in enumerate(entry.row_lines)] +
                       [(line, -1) for line, _ in entry.rejected_lines])[: self.selection_size]
        reasons = dict(entry.rejected_lines)
        for line, index in lines:
            if index < 0:
                return [], f"not a pool row: line {line} is invalid ({reasons[line]})"
        if not lines:
            return [], "no rows: a submission is rows selected from the pool"
        return [index for _, index in lines], None

    def needs_row_texts(self) -> bool:
        return True  # the advisory on rows that teach an earlier submission's facts in other wordings

    def plan(self, entries: list[Entry], eval_set: EvalSet) -> dict[str, ShardPlan]:
        """The plan under this game's rule set, each miner's plan carrying every rule set's verdict on it
        (`ShardPlan.rule_views`: rule set -> {"reason", "loss", "why"})."""
        views = {name: plan_under(rules, self, entries, eval_set) for name, rules in RULE_SETS.items()}
        plans = {hotkey: plan for hotkey, (plan, _) in views[self.rules].items()}
        flag_same_facts(entries, eval_set, plans, self.duplicate_threshold, self.selection_size)
        for hotkey, plan in plans.items():
            plan.rule_views = {name: _view(view[hotkey]) for name, view in views.items()}
            fixed = plan.rule_views[self.rules]
            if fixed["loss"] is not None:  # scored at a fixed loss: nothing to train
                plan.kept_indices = []
                plan.reason = (f"not trained: {fixed['why']}, so it is scored at the benchmark loss "
                               f"{fixed['loss']:.2f} ({self.rules})")
        return plans

    # -- scoring -------------------------------------------------------------------------------------------

    def top_k(self, n_uids: int) -> int:
        return max(math.floor(n_uids * self.top_fraction), 1)

    def select_winner(self, contenders: list[Contender], hotkeys: dict[int, str],
                      coldkeys: dict[int, str]) -> Contender | None:
        """The winner as the game's rules read (with the uid that receives the reward) or None when nobody was
        scored."""
        return select_winner(contenders, hotkeys, coldkeys, self.top_k(len(hotkeys)))

    def score(self, contenders: list[Contender], context: ScoringContext) -> CompetitionScores:
        """Weight 1 to the rewarded uid: this round's winner once its rewarding window opened (decided once, from the
        losses then, under the game's rule set; the other rule sets' decisions are shown beside it where they
        differ), else the last decided round's winner (kept while a round is validated, or reused while the pool
        does not change); nobody (fresh start, no scored submission): the burn uid."""
        out = CompetitionScores(scores={c.uid: 0.0 for c in contenders})
        reward = context.reward
        round_id = context.round.round_id if context.round else "?"
        k = self.top_k(len(context.hotkeys))
        deciding = reward is not None and reward.source_round == round_id
        fixed = fixed_loss_contenders(self.rule_set, context.submissions, self.benchmark_loss)
        for c, why in fixed:  # scored at a loss the rule set fixes, not evaluated
            out.scores[c.uid], out.losses[c.uid] = 0.0, c.loss
            out.reasons[c.uid] = f"scored at the benchmark loss {c.loss:.2f}: {why} ({self.rules})"
        everyone = contenders + [c for c, _ in fixed]
        uid, source, moved, why = self._rewarded(everyone, context, out, k)
        best = sorted(everyone, key=lambda x: (x.loss, x.uid))[:k]
        for c in everyone:
            if uid is not None and c.uid == uid:
                out.scores[c.uid] = 1.0
                out.reasons[c.uid] = why
            elif moved is not None and c.hotkey == moved:
                out.scores[c.uid] = 1.0
                out.reasons[c.uid] = (f"{why}; uid {c.uid} holds another hotkey now, so the reward goes to uid {uid} "
                                      "(its hotkey's or coldkey's uid now)")
            elif not deciding:
                out.reasons[c.uid] = f"round {round_id} is not decided yet (its rewarding window decides it)"
            elif c.uid not in out.losses:
                out.reasons[c.uid] = (f"among the {k} lowest eval losses, but not the earliest commitment of them"
                                      if c in best else f"eval loss {c.loss:.4f} is not among the {k} lowest")
            if out.differs and c.uid in out.differs_uids and c.uid != uid:
                out.reasons[c.uid] = f"{out.reasons[c.uid]}; {out.differs}"
        _assign_weight(out, contenders, context, uid, source, why)
        return out

    def _rewarded(self, contenders: list[Contender], context: ScoringContext, out: CompetitionScores,
                  k: int) -> tuple[int | None, str | None, str | None, str | None]:
        """(rewarded uid, its round, the winner's hotkey if it moved uid, why); a round decided now also goes in
        out (with the other rule sets' decisions where they differ)."""
        reward = context.reward
        round_id = context.round.round_id if context.round else "?"
        if reward is not None and reward.decide_now:  # the first epoch at or after the round's reward time
            decisions = self.decisions(contenders, context, k)
            decision = decisions[self.rules]
            out.decided = (reward.source_round, decision.uid, decision.loss)
            out.decided_note = decision.why if decision.kept else None
            differing = [d for name, d in decisions.items() if name != self.rules and d.uid != decision.uid]
            if differing:
                out.differs = "; ".join(f"{d.rules}: {d.summary()}" for d in [decision] + differing)
                out.differs_uids = {d.uid for d in [decision] + differing if d.uid is not None}
                out.note = out.differs
            why = decision.why if not differing else out.differs if decision.kept else f"{decision.why}; {out.differs}"
            return decision.uid, reward.source_round, decision.moved, why
        if reward is not None and reward.source_round is not None:
            why = _reward_reason(reward, round_id) if reward.winner_uid is not None or reward.note else None
            return reward.winner_uid, reward.source_round, None, why
        return None, None, None, None

    def decisions(self, contenders: list[Contender], context: ScoringContext, k: int) -> dict[str, Decision]:
        """rule set name -> what it rewards for the round being decided. The game's own rule set decides from
        `contenders` (this epoch's, or the round's recorded ones); the others from the round's submissions and
        each one's verdict under them (without recorded submissions, the others are not compared)."""
        reward = context.reward
        submissions = reward.submissions if reward.submissions is not None else context.submissions
        pool = list(reward.contenders) if reward.contenders is not None else contenders
        if not submissions and pool:  # recorded without submissions: its own rule set, from its contenders
            return {self.rules: self.rule_set.reward_step(self, pool, (), context, k)}
        out = {}
        for rules in [self.rule_set] + self.other_rule_sets():
            theirs, missing = rule_contenders(rules, submissions, self.benchmark_loss)
            decision = rules.reward_step(self, theirs, submissions, context, k)
            out[rules.name] = replace(decision, unevaluated=tuple(missing))
        return out


# -- rule sets --------------------------------------------------------------------------------------------------

NO_LOSS = 999.0  # what the live validator records for a uid it checked without an eligible submission


@dataclass(frozen=True)
class Decision:
    """What one rule set rewards for a round."""

    rules: str
    uid: int | None  # the rewarded uid (None: the burn uid)
    loss: float | None
    why: str
    kept: bool = False  # the rule set's reward step failed: the previous weights stay
    moved: str | None = None  # the winner's hotkey, when its reward goes to the uid that holds it (or its coldkey)
    unevaluated: tuple[int, ...] = ()  # uids it would have weighed that this validator did not evaluate

    def summary(self) -> str:
        who = f"uid {self.uid}" if self.uid is not None else "the burn uid"
        text = f"keeps {who} (the previous weights): {self.why.split(': ', 1)[-1]}" if self.kept else who
        if self.unevaluated:
            text += f" (uids {', '.join(map(str, self.unevaluated))} not evaluated here)"
        return text


def _intended_reward_step(game: SelectionCompetition, contenders: list[Contender], submissions, context, k: int
                          ) -> Decision:
    """Among the k lowest losses the earliest commitment (block, then uid) wins; a winner whose uid changed hands
    is found by its hotkey, then its coldkey, else the next candidate (`select_winner`); nobody: the burn uid."""
    winner = select_winner(contenders, dict(context.hotkeys), dict(context.coldkeys), k)
    if winner is None:
        return Decision("intended", None, None, f"round {_round(context)} had no scored submission")
    moved = winner.hotkey if context.hotkeys.get(winner.uid) != winner.hotkey else None
    return Decision("intended", winner.uid, winner.loss,
                    f"winner of round {_round(context)}: the earliest commitment among the {k} lowest eval losses",
                    moved=moved)


def _live_reward_step(game: SelectionCompetition, contenders: list[Contender], submissions, context, k: int
                      ) -> Decision:
    """The live reward step (FLock-subnet 492c7bb), whose failures keep the previous weights (`live_winner`)."""
    winner, failure = live_winner(contenders, submissions, dict(context.hotkeys), k)
    if failure is not None:
        previous = context.reward.previous_uid if context.reward is not None else None
        return Decision(LIVE_492C7BB.name, previous, None, f"the previous weights stay: {failure}", kept=True)
    real = winner.loss < NO_LOSS
    return Decision(LIVE_492C7BB.name, winner.uid, winner.loss if real else None,
                    f"winner of round {_round(context)}: the earliest commitment among the {k} lowest "
                    + ("eval losses" if real else f"losses, which hold ineligible submissions (loss {NO_LOSS:g}) "
                       f"because fewer than {k} have a real loss"))


def live_winner(contenders: list[Contender], submissions, hotkeys: dict[int, str], k: int
                ) -> tuple[Contender | None, str | None]:
    """Fact 1, the live reward step: (winner, None), or (None, why it fails).

    The live validator has a loss for every uid it checked: the eligible submissions' losses, 999 with its
    commitment block for every other recorded submission, and 999 without a block for every uid without one. It
    takes the k lowest (ties: lower uid, its database order) and sorts them by commitment block (then by the time
    it polled the commitment; here: lower loss, then uid). It fails, and keeps the weights it had, when a 999 row
    without a block meets one with a block in that sort (fewer than k real losses), when nobody has a loss, when
    the winner has no submission or its uid holds another hotkey now (its hotkey hand-over treats the metagraph's
    hotkey list as a dict), and when the winner is uid 0 (taken for "no winner")."""
    rows = [(c.loss, c.uid, c.block, c.hotkey, c) for c in contenders]
    seen = {c.uid for c in contenders}
    for s in submissions:
        if s.uid not in seen:
            seen.add(s.uid)
            rows.append((NO_LOSS, s.uid, s.block, s.hotkey, Contender(s.uid, s.hotkey, NO_LOSS, s.block, s.coldkey)))
    rows += [(NO_LOSS, uid, None, None, None) for uid in sorted(hotkeys) if uid not in seen]
    if not rows:
        return None, "nobody has a loss"
    window = sorted(rows, key=lambda r: (r[0], r[1]))[:k]
    if len({r[2] is None for r in window}) == 2:
        blockless = next(r[1] for r in window if r[2] is None)
        return None, (f"fewer than {k} submissions have a real loss, and the {k} lowest losses hold uid {blockless} "
                      "without a submission (loss 999, no commitment block): sorting them by block fails")
    if window[0][2] is None:
        return None, (f"fewer than {k} submissions have a real loss: the winner would be uid {window[0][1]}, which "
                      "has no submission")
    loss, uid, _, hotkey, winner = min(window, key=lambda r: commitment_order(LIVE_492C7BB, r[4]))
    if hotkeys.get(uid) != hotkey:
        return None, (f"the winner's uid {uid} holds another hotkey now (the live hand-over code fails on the "
                      "metagraph's list of hotkeys)")
    if uid == 0:
        return None, "the winner is uid 0, which the live code takes for no winner"
    return winner, None


@dataclass(frozen=True)
class RuleSet:
    """How the selection game is decided. `intended` is the game as its rules read; a live release's rule set
    reproduces what the validators running that release actually do (quirks included), because a validator earns
    only while its weights agree with the stake majority's. Each field is one fact, with its rule below."""

    name: str
    about: str
    reads_every_line: bool  # fact 2: a line that does not load anywhere in the file makes it ineligible
    trainer_reads_physical_lines: bool  # fact 2: training reads the first rows as physical lines; a failed
    # training scores the benchmark loss, eligible (an empty selection passes the pool check)
    same_block_copies_both_out: bool  # fact 3: two copies committed in one block are both duplicates
    reads_competition_id: bool  # fact 4: the commitment's competition field picks the game
    short_revisions: bool  # fact 4: a 7-39 hex prefix of the dataset's commit counts as its revision
    ties_by_loss: bool  # fact 5: commitments in one block are ordered by lower loss (the live poll time's stand-in)
    reward_step: Callable[..., Decision]  # fact 1: who is rewarded, or the previous weights kept


INTENDED = RuleSet("intended", "the game as its rules read", reads_every_line=False,
                   trainer_reads_physical_lines=False, same_block_copies_both_out=False, reads_competition_id=True,
                   short_revisions=False, ties_by_loss=False, reward_step=_intended_reward_step)
LIVE_492C7BB = RuleSet("live-492c7bb", "what validators running FLock-subnet 492c7bb do", reads_every_line=True,
                       trainer_reads_physical_lines=True, same_block_copies_both_out=True,
                       reads_competition_id=False, short_revisions=True, ties_by_loss=True,
                       reward_step=_live_reward_step)
RULE_SETS: dict[str, RuleSet] = {r.name: r for r in (INTENDED, LIVE_492C7BB)}


def unloadable(rules: RuleSet, entry: Entry) -> str | None:
    """Fact 2: the live loader parses every line of the file, so one that does not load, anywhere (even after the
    rows it uses), makes the submission ineligible. The game as its rules read looks at the used rows only."""
    if not rules.reads_every_line or not entry.rejected_lines:
        return None
    line, why = entry.rejected_lines[0]
    return f"the file does not load: line {line} is {why} (every line is read, not only the rows used)"


def training_failure(rules: RuleSet, entry: Entry, rows: int) -> str | None:
    """Fact 2: the live trainer reads the file's first `rows` physical lines as they are; a blank line among them, a
    line with characters around its JSON, a row without a `system` text or `conversations`, or a file without rows
    makes training fail, and a failed training scores the benchmark loss as eligible. None: it trains."""
    if not rules.trainer_reads_physical_lines:
        return None
    facts = entry.file_facts or {}
    bad = facts.get("untrainable")
    if bad is not None and int(bad[0]) <= rows:
        return f"the live trainer fails on line {bad[0]} of its first {rows} lines ({bad[1]})"
    if not entry.row_hashes:
        return "the live trainer fails on a file without rows"
    return None


def commitment_order(rules: RuleSet, c: Contender) -> tuple:
    """Fact 5: the order of commitments among the k lowest losses: block, then (live) the time the validator polled
    the commitment, which is not on chain; lower loss, then uid, stands in for it. As the rules read: block, uid."""
    return (c.block, c.loss, c.uid) if rules.ties_by_loss else (c.block, c.uid)


def flag_same_facts(entries: list[Entry], eval_set: EvalSet, plans: dict[str, ShardPlan], threshold: int,
                    size: int) -> None:
    """Advisory only (the rules compare rows as written, and so do we): a submission whose rows teach more than
    `threshold` of the same facts as an earlier submission (block, then uid) in other wordings of the pool, while
    sharing no more than `threshold` rows as written, gets `ShardPlan.advisory` naming it. A row's fact is its two
    rarest words in the pool (a fact's name and value; its wordings share them)."""
    if not eval_set.texts:
        return
    counts = Counter(w for text in eval_set.texts for w in set(fold(text).split()))
    earlier: list[tuple[Entry, set, set]] = []
    for entry in sorted((e for e in entries if e.row_texts is not None), key=lambda e: (e.commit_block, e.uid)):
        facts = {_fact(text, counts) for text in entry.row_texts[:size]}
        keys = set(entry.raw_keys[:size])
        found = next(((other, len(facts & other_facts), len(keys & other_keys))
                      for other, other_facts, other_keys in earlier
                      if len(facts & other_facts) > threshold >= len(keys & other_keys)), None)
        if found is not None and entry.hotkey in plans:
            other, shared_facts, shared_rows = found
            plans[entry.hotkey].advisory = (
                f"teaches {shared_facts} of the same facts as the earlier submission of uid {other.uid} (block "
                f"{other.commit_block}) in other wordings of the pool, sharing {shared_rows} rows as written: not a "
                "copy under the rules, which compare rows as written")
        earlier.append((entry, facts, keys))


def _fact(text: str, counts: Counter) -> tuple[str, ...]:
    """A pool row's fact: its two rarest words in the pool (fewest rows, then alphabetical)."""
    return tuple(sorted(sorted(set(fold(text).split()), key=lambda w: (counts.get(w, 0), w))[:2]))


def copies(rules: RuleSet, entry: Entry, other: Entry) -> bool:
    """Fact 3: whether `other`, loaded before `entry` in commitment order, makes `entry` a duplicate when they share
    too many rows (always), and whether `entry` then makes `other` one too (live: when they are in the same block,
    each is found a copy of the other once both were checked)."""
    return rules.same_block_copies_both_out and other.commit_block == entry.commit_block


def plan_under(rules: RuleSet, game: SelectionCompetition, entries: list[Entry], eval_set: EvalSet
               ) -> dict[str, tuple[ShardPlan, tuple[float, str] | None]]:
    """hotkey -> (its plan, (fixed loss, why) or None) under one rule set."""
    pool = eval_set.raw_keys
    out: dict[str, tuple[ShardPlan, tuple[float, str] | None]] = {}
    loaded: list[tuple[Entry, frozenset[str]]] = []  # the submissions read before, in commitment order
    for entry in sorted(entries, key=lambda e: (e.commit_block, e.uid)):
        reason = unloadable(rules, entry)
        indices: list[int] = []
        if reason is None:
            indices, reason = game.submission_rows(entry)
            if not entry.row_hashes and rules.trainer_reads_physical_lines:
                reason = None  # no rows: the pool check passes (0 of 0); training fails below
        plan = ShardPlan(hotkey=entry.hotkey, uid=entry.uid, rows_in=len(indices))
        keys = [entry.raw_keys[i] for i in indices]
        selected = frozenset(keys)
        if reason is None:
            reason = _pool_rule(entry, indices, keys, selected, pool, plan)
        if reason is None:
            reason = _copy_rule(rules, game, entry, selected, loaded, plan, out)
        if selected and unloadable(rules, entry) is None:
            loaded.append((entry, selected))
        fixed = None
        if reason is None:
            plan.kept_indices = indices
            why = training_failure(rules, entry, game.selection_size)
            fixed = (float(game.benchmark_loss), why) if why is not None else None
        plan.reason = reason
        out[entry.hotkey] = (plan, fixed)
    return out


def _pool_rule(entry: Entry, indices: list[int], keys: list[str], selected: frozenset[str], pool: frozenset[str],
               plan: ShardPlan) -> str | None:
    """Every row of a submission is a distinct pool row, as written (keys sorted)."""
    outside = [entry.row_lines[i] for i, k in zip(indices, keys) if k not in pool]
    if outside:
        return (f"not from the pool: {len(outside)} of {len(keys)} rows are not pool rows (first at line "
                f"{outside[0]})")
    if len(selected) < len(keys):
        plan.duplicates_within = len(keys) - len(selected)
        return (f"repeated rows: {len(keys) - len(selected)} of {len(keys)} rows repeat another row of the "
                "submission (a submission is distinct pool rows)")
    return None


def _copy_rule(rules: RuleSet, game: SelectionCompetition, entry: Entry, selected: frozenset[str],
               loaded: list[tuple[Entry, frozenset[str]]], plan: ShardPlan, out: dict) -> str | None:
    """More than `duplicate_threshold` rows shared with a submission read before: a duplicate (and, where `copies`
    says so, that one too)."""
    for other, other_keys in loaded:
        shared = len(selected & other_keys)
        if shared <= game.duplicate_threshold:
            continue
        if copies(rules, entry, other) and other.hotkey in out and out[other.hotkey][0].reason is None:
            earlier, _ = out[other.hotkey]
            earlier.reason = (f"duplicate: shares {shared} rows with uid {entry.uid}, committed in the same block "
                              f"{entry.commit_block}; more than {game.duplicate_threshold} is a copy, and each of "
                              "the two is found a copy of the other")
            earlier.kept_indices, earlier.duplicates_earlier = [], shared
            earlier.duplicated_from = {entry.uid: shared}
            out[other.hotkey] = (earlier, None)
        plan.duplicates_earlier = shared
        plan.duplicated_from = {other.uid: shared}
        return (f"duplicate: shares {shared} rows with the earlier submission of uid {other.uid} (block "
                f"{other.commit_block}); more than {game.duplicate_threshold} is a copy")
    return None


def _view(pair: tuple[ShardPlan, tuple[float, str] | None]) -> dict:
    plan, fixed = pair
    return {"reason": plan.reason, "loss": fixed[0] if fixed else None, "why": fixed[1] if fixed else None}


def rule_contenders(rules: RuleSet, submissions, benchmark_loss: float) -> tuple[list[Contender], list[int]]:
    """(the contenders under `rules`, the uids it would weigh that have no loss here) from the round's submissions:
    the ones its verdict keeps, at the loss it fixes, else their evaluated loss; a failed training is the
    benchmark loss where the rule set says so (the live trainer returns it)."""
    out, missing = [], []
    for s in submissions:
        view = (s.views or {}).get(rules.name)
        if view is not None and view.get("reason") is not None:
            continue
        loss = view.get("loss") if view is not None else None
        if loss is None and s.status == "failed":
            if not rules.trainer_reads_physical_lines:
                continue
            loss = benchmark_loss
        loss = loss if loss is not None else s.loss
        if loss is None:
            if view is not None:
                missing.append(s.uid)
            continue
        out.append(Contender(s.uid, s.hotkey, float(loss), s.block, s.coldkey))
    return out, missing


def fixed_loss_contenders(rules: RuleSet, submissions, benchmark_loss: float) -> list[tuple[Contender, str]]:
    """The submissions `rules` scores at a loss it fixes rather than one evaluated (a live training failure), with
    why."""
    out = []
    for s in submissions:
        view = (s.views or {}).get(rules.name) or {}
        if view.get("reason") is None and view.get("loss") is not None:
            out.append((Contender(s.uid, s.hotkey, float(view["loss"]), s.block, s.coldkey), view.get("why") or ""))
        elif s.status == "failed" and rules.trainer_reads_physical_lines and view.get("reason") is None \
                and s.views:
            out.append((Contender(s.uid, s.hotkey, float(benchmark_loss), s.block, s.coldkey),
                        "its training failed, and the live trainer returns the benchmark loss then"))
    return out


def _round(context: ScoringContext) -> str:
    return context.reward.source_round if context.reward is not None else "?"


def _reward_reason(reward: RewardState, round_id: str) -> str:
    """Why the last decided round's uid is rewarded at a later epoch."""
    source = reward.source_round
    if reward.note:
        return f"round {source}: {reward.note}" + (
            f" (round {round_id} reuses it: the pool did not change)" if reward.reused_from else "")
    if source == round_id:
        return f"winner of round {round_id}: the earliest commitment among the k lowest eval losses"
    return (f"winner of round {source}, rewarded until a later round is decided"
            + (f" (round {round_id} reuses it: the pool did not change)" if reward.reused_from else ""))


def _assign_weight(out: CompetitionScores, contenders: list[Contender], context: ScoringContext, uid: int | None,
                   source: str | None, why: str | None) -> None:
    """Sets `out`'s weights and note: all to the rewarded uid, else all to the burn uid (when there is one)."""
    if uid is not None:
        out.weights = {uid: 1.0}
        if uid not in {c.uid for c in contenders} and uid not in out.losses:
            out.extra[uid] = (context.hotkeys.get(uid, ""), "reward", why)
        out.note = out.note or why
    elif context.burn_uid is not None:
        burn = (why if why is not None else f"round {source} had no scored submission" if source is not None
                else "no round has been decided yet (fresh start)")
        out.weights = {context.burn_uid: 1.0}
        out.extra[context.burn_uid] = (context.hotkeys.get(context.burn_uid, ""), "burn",
                                       f"burn: {burn}; all weight to the subnet owner's uid")
        out.note = out.note or out.extra[context.burn_uid][2]


def select_winner(contenders: list[Contender], hotkeys: dict[int, str], coldkeys: dict[int, str],
                  k: int) -> Contender | None:
    """Among the `k` lowest losses (ties: lower uid first), the earliest commitment (block, then uid); its reward goes
    to the uid that holds its hotkey now, else one that holds its coldkey, else the next candidate whose uid still
    holds its hotkey (in commitment order among the k, then by loss), else its own uid."""
    if not contenders:
        return None
    by_loss = sorted(contenders, key=lambda c: (c.loss, c.uid))
    best = sorted(by_loss[:k], key=lambda c: commitment_order(INTENDED, c))
    winner = best[0]
    if hotkeys.get(winner.uid) == winner.hotkey:
        return winner
    for uid in sorted(hotkeys):
        if hotkeys[uid] == winner.hotkey:
            return _moved(winner, uid)
    if winner.coldkey:
        for uid in sorted(coldkeys):
            if coldkeys[uid] == winner.coldkey:
                return _moved(winner, uid)
    for candidate in best[1:] + by_loss:
        if candidate.uid != winner.uid and hotkeys.get(candidate.uid) == candidate.hotkey:
            return candidate
    return winner


def _moved(c: Contender, uid: int) -> Contender:
    return Contender(uid=uid, hotkey=c.hotkey, loss=c.loss, block=c.block, coldkey=c.coldkey, per_row=c.per_row)
