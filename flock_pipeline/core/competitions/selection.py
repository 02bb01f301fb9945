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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta, UTC
from typing import ClassVar

from flock_pipeline.core.competitions.base import (Clock, Competition, CompetitionConfigError, CompetitionScores,
                                                   Contender, Entry, EvalSet, RewardState, Round, ScoringContext)
from flock_pipeline.core.dedup import ShardPlan
from flock_pipeline.core.rowformats import RAW_JSON, RowFormat

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

    def submission_rows(self, entry: Entry) -> tuple[list[int], str | None]:
        """Indices (into the used rows) of the submission's rows, or the reason it is not a submission.

        The submission is the first `selection_size` non-empty lines of the file: a line among them that failed
        validation cannot be a pool row."""
        lines = sorted([(line, i) for i, line in enumerate(entry.row_lines)] +
                       [(line, -1) for line, _ in entry.rejected_lines])[: self.selection_size]
        reasons = dict(entry.rejected_lines)
        for line, index in lines:
            if index < 0:
                return [], f"not a pool row: line {line} is invalid ({reasons[line]})"
        if not lines:
            return [], "no rows: a submission is rows selected from the pool"
        return [index for _, index in lines], None

    def plan(self, entries: list[Entry], eval_set: EvalSet) -> dict[str, ShardPlan]:
        pool = eval_set.raw_keys
        plans: dict[str, ShardPlan] = {}
        earlier: list[tuple[Entry, frozenset[str]]] = []  # every loaded submission, in commitment order
        for entry in sorted(entries, key=lambda e: (e.commit_block, e.uid)):
            indices, reason = self.submission_rows(entry)
            plan = ShardPlan(hotkey=entry.hotkey, uid=entry.uid, rows_in=len(indices))
            keys = [entry.raw_keys[i] for i in indices]
            selected = frozenset(keys)
            if reason is None:
                outside = [entry.row_lines[i] for i, k in zip(indices, keys) if k not in pool]
                if outside:
                    reason = (f"not from the pool: {len(outside)} of {len(keys)} rows are not pool rows "
                              f"(first at line {outside[0]})")
                elif len(selected) < len(keys):
                    plan.duplicates_within = len(keys) - len(selected)
                    reason = (f"repeated rows: {len(keys) - len(selected)} of {len(keys)} rows repeat another row "
                              "of the submission (a submission is distinct pool rows)")
            for other, other_keys in earlier if reason is None else ():  # the pool check comes first
                shared = len(selected & other_keys)
                if shared > self.duplicate_threshold:
                    plan.duplicates_earlier = shared
                    plan.duplicated_from = {other.uid: shared}
                    reason = (f"duplicate: shares {shared} rows with the earlier submission of uid {other.uid} "
                              f"(block {other.commit_block}); more than {self.duplicate_threshold} is a copy")
                    break
            if selected:
                earlier.append((entry, selected))
            if reason is None:
                plan.kept_indices = indices
            plan.reason = reason
            plans[entry.hotkey] = plan
        return plans

    # -- scoring -------------------------------------------------------------------------------------------

    def top_k(self, n_uids: int) -> int:
        return max(math.floor(n_uids * self.top_fraction), 1)

    def select_winner(self, contenders: list[Contender], hotkeys: dict[int, str],
                      coldkeys: dict[int, str]) -> Contender | None:
        """The winner (with the uid that receives the reward) or None when nobody was scored."""
        return select_winner(contenders, hotkeys, coldkeys, self.top_k(len(hotkeys)))

    def score(self, contenders: list[Contender], context: ScoringContext) -> CompetitionScores:
        """Weight 1 to the rewarded uid: this round's winner once its rewarding window opened (decided once, from the
        losses then), else the last decided round's winner (kept while a round is validated, or reused while the
        pool does not change); nobody (fresh start, no scored submission): the burn uid."""
        out = CompetitionScores(scores={c.uid: 0.0 for c in contenders})
        reward = context.reward
        round_id = context.round.round_id if context.round else "?"
        k = self.top_k(len(context.hotkeys))
        deciding = reward is not None and reward.source_round == round_id
        uid, source, moved = self._rewarded(contenders, context, out)
        why = _reward_reason(uid, source, round_id, k, reward)
        best = sorted(contenders, key=lambda x: (x.loss, x.uid))[:k]
        for c in contenders:
            if uid is not None and c.uid == uid:
                out.scores[c.uid] = 1.0
                out.reasons[c.uid] = why
            elif moved is not None and c.hotkey == moved:
                out.scores[c.uid] = 1.0
                out.reasons[c.uid] = (f"{why}; uid {c.uid} holds another hotkey now, so the reward goes to uid {uid} "
                                      "(its hotkey's or coldkey's uid now)")
            elif deciding:
                out.reasons[c.uid] = (f"among the {k} lowest eval losses, but not the earliest commitment of them"
                                      if c in best else f"eval loss {c.loss:.4f} is not among the {k} lowest")
            else:
                out.reasons[c.uid] = f"round {round_id} is not decided yet (its rewarding window decides it)"
        _assign_weight(out, contenders, context, uid, source, why)
        return out

    def _rewarded(self, contenders: list[Contender], context: ScoringContext,
                  out: CompetitionScores) -> tuple[int | None, str | None, str | None]:
        """(rewarded uid, its round, the winner's hotkey if it moved uid); a winner decided now also goes in out."""
        reward = context.reward
        if reward is not None and reward.decide_now:  # the first epoch at or after the round's reward time
            pool = list(reward.contenders) if reward.contenders is not None else contenders
            winner = self.select_winner(pool, dict(context.hotkeys), dict(context.coldkeys))
            out.decided = (reward.source_round, winner.uid if winner else None, winner.loss if winner else None)
            moved = winner.hotkey if winner is not None and context.hotkeys.get(winner.uid) != winner.hotkey else None
            return (winner.uid if winner else None), reward.source_round, moved
        if reward is not None and reward.source_round is not None:
            return reward.winner_uid, reward.source_round, None
        return None, None, None


def _reward_reason(uid: int | None, source: str | None, round_id: str, k: int,
                   reward: RewardState | None) -> str | None:
    """Why `uid` is rewarded (None when nobody is)."""
    if uid is None:
        return None
    if reward.decide_now:
        return f"winner of round {source}: the earliest commitment among the {k} lowest eval losses"
    if source == round_id:
        return f"winner of round {round_id}: the earliest commitment among the {k} lowest eval losses"
    return (f"winner of round {source}, rewarded until a later round is decided"
            + (f" (round {round_id} reuses it: the pool did not change)" if reward.reused_from else ""))


def _assign_weight(out: CompetitionScores, contenders: list[Contender], context: ScoringContext, uid: int | None,
                   source: str | None, why: str | None) -> None:
    """Sets `out`'s weights and note: all to the rewarded uid, else all to the burn uid (when there is one)."""
    if uid is not None:
        out.weights = {uid: 1.0}
        if uid not in {c.uid for c in contenders}:
            out.extra[uid] = (context.hotkeys.get(uid, ""), "reward", why)
        out.note = why
    elif context.burn_uid is not None:
        burn = (f"round {source} had no scored submission" if source is not None
                else "no round has been decided yet (fresh start)")
        out.weights = {context.burn_uid: 1.0}
        out.extra[context.burn_uid] = (context.hotkeys.get(context.burn_uid, ""), "burn",
                                       f"burn: {burn}; all weight to the subnet owner's uid")
        out.note = out.extra[context.burn_uid][2]


def select_winner(contenders: list[Contender], hotkeys: dict[int, str], coldkeys: dict[int, str],
                  k: int) -> Contender | None:
    """Among the `k` lowest losses (ties: lower uid first), the earliest commitment (block, then uid); its reward goes
    to the uid that holds its hotkey now, else one that holds its coldkey, else the next candidate whose uid still
    holds its hotkey (in commitment order among the k, then by loss), else its own uid."""
    if not contenders:
        return None
    by_loss = sorted(contenders, key=lambda c: (c.loss, c.uid))
    best = sorted(by_loss[:k], key=lambda c: (c.block, c.uid))
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
