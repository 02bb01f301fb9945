"""A new game defined in this one file (its row format, its metric, its rules) and registered here, run through a
whole local epoch (datasets, shards, evaluation, scores, weights) with no product file changed for it.

The game: miners publish question/answer rows `{"question": str, "answer": str}`; the objective is exact-match
accuracy on the validator's held-out questions (higher is better) of a learner that answers a question with the
answer of the training question most like it (a stand-in for a generated answer: the pipeline only sees a score
and its direction). The base model knows nothing (accuracy 0), so a miner must answer at least one eval question right;
the best accuracy wins everything, ties to the earliest commitment. Rows copied from an earlier miner and eval-set
questions are dropped by the shared dedup rules.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import ClassVar

import dagster as dg
import pytest

from flock_pipeline.core.commitment import Commitment
from flock_pipeline.core.competitions import (Competition, CompetitionScores, Contender, Entry, EvalSet,
                                              ScoringContext)
from flock_pipeline.core.competitions.config import KINDS
from flock_pipeline.core.dedup import DedupConfig, MinerRows, ShardPlan, deduplicate
from flock_pipeline.core.objectives import Objective
from flock_pipeline.core.rowformats import RowFormat
from flock_pipeline.core.schema import DEFAULT_SYSTEM_PROMPT, RowError, Turn
from flock_pipeline_tests.defs.conftest import demo_home

# -- the game ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QaRow:
    question: str
    answer: str
    system: str = DEFAULT_SYSTEM_PROMPT

    @property
    def turns(self) -> tuple[Turn, ...]:
        return (Turn("user", self.question), Turn("assistant", self.answer))

    def to_json_obj(self) -> dict:
        return {"question": self.question, "answer": self.answer}

    def canonical_json(self) -> str:
        return json.dumps(self.to_json_obj(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    @property
    def row_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


class QaFormat(RowFormat):
    name = "qa"

    def parse(self, obj, limits) -> QaRow:
        if not isinstance(obj, dict) or set(obj) != {"question", "answer"}:
            raise RowError("a qa row is {\"question\": str, \"answer\": str}")
        if not all(isinstance(v, str) and v.strip() for v in obj.values()):
            raise RowError("question and answer must be non-empty strings")
        return QaRow(obj["question"], obj["answer"])

    def from_json_obj(self, obj: dict) -> QaRow:
        return QaRow(obj["question"], obj["answer"])


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _answer(question: str, train_rows) -> str | None:
    """The answer of the training question sharing the most words with `question` (Jaccard above 0.5), if any."""
    words = set(_norm(question).split())
    best = max(((len(words & set(_norm(r.question).split())) / len(words | set(_norm(r.question).split())), r.answer)
                for r in train_rows), default=(0.0, None))
    return best[1] if best[0] > 0.5 else None


class ExactMatch(Objective):
    name = "exact-match"
    higher_is_better = True
    metric = "accuracy"

    def evaluate(self, base, train_rows, eval_rows, recipe, on_step=None):
        from flock_pipeline.core.evaluator import EvalOutcome

        start = time.perf_counter()
        per_row = [1.0 if _norm(_answer(r.question, train_rows) or "") == _norm(r.answer) else 0.0
                   for r in eval_rows]
        return EvalOutcome(eval_loss=sum(per_row) / len(per_row), per_row_losses=per_row, train_rows=len(train_rows),
                           eval_seconds=time.perf_counter() - start, metrics={"correct": int(sum(per_row))})

    def base_outcome(self, base, eval_rows, recipe):
        return self.evaluate(base, [], eval_rows, recipe)


QA, EXACT_MATCH = QaFormat(), ExactMatch()


@dataclass(frozen=True)
class QaCompetition(Competition):
    commitment_id: str = "7"
    eval_repo: str = "flock/qa-eval"
    dedup: DedupConfig = field(default_factory=lambda: DedupConfig(near=None))

    kind: ClassVar[str] = "qa"
    row_format: ClassVar[RowFormat] = QA
    objective: ClassVar[Objective] = EXACT_MATCH
    needs_base_loss: ClassVar[bool] = True
    in_corpus: ClassVar[bool] = False

    def plan(self, entries: list[Entry], eval_set: EvalSet) -> dict[str, ShardPlan]:
        miners = [MinerRows(e.hotkey, e.uid, e.commit_block, e.row_hashes, e.row_blocks) for e in entries]
        return deduplicate(miners, eval_set.row_hashes, self.dedup)

    def score(self, contenders: list[Contender], context: ScoringContext) -> CompetitionScores:
        out = CompetitionScores(scores={c.uid: c.loss for c in contenders})
        better = [c for c in contenders if self.objective.improves(c.loss, context.base_loss)]
        for c in contenders:
            if c not in better:
                out.statuses[c.uid] = "no_improvement"
                out.reasons[c.uid] = f"accuracy {c.loss:.2f} is not above the base model's {context.base_loss:.2f}"
        if better:
            winner = min(better, key=lambda c: (-c.loss, c.block, c.uid))
            out.weights = {winner.uid: 1.0}
            out.reasons[winner.uid] = f"the best accuracy, {winner.loss:.2f}"
        return out


# -- a local network playing it ------------------------------------------------------------------------------------

EVAL = [(f"What is the capital of Land{i}?", f"City{i}") for i in range(8)]  # the validator's held-out questions


def teach(i: int, answer: str | None = None) -> tuple[str, str]:
    """A row that teaches eval question i's answer without being that eval row."""
    return f"Which city is the capital of Land{i}?", answer or f"City{i}"


def _jsonl(pairs) -> bytes:
    return "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in pairs).encode()


OTHER = [("What is 2 + 2?", "4"), ("What colour is the sky?", "Blue")]
MINERS = {  # label -> its data.jsonl, in commitment order
    "knows-six": _jsonl([teach(i) for i in range(6)] + OTHER),
    "knows-two": _jsonl([teach(6), teach(7), ("Name a prime number.", "7"), ("How many legs has a cat?", "4")]),
    "wrong-answers": _jsonl([teach(i, "Nowhere") for i in range(8)]),
    "copier": _jsonl([teach(i) for i in range(6)] + OTHER),
    "leaker": _jsonl(EVAL),
    "chat-rows": b'{"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n',
}


@pytest.fixture(scope="module")
def qa_epoch(tmp_path_factory, tiny_model_dir):
    from flock_pipeline.defs.epoch import run_epoch
    from flock_pipeline.resources import build_resources
    from flock_pipeline.resources.chain import LocalChainResource
    from flock_pipeline.resources.hub import LocalHubResource

    home = demo_home(tmp_path_factory, tiny_model_dir, "qa-network")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(KINDS, "qa", QaCompetition)  # the registration: one line, in this file
        chain = LocalChainResource(path=str(home / "chain.json"))
        hub = LocalHubResource(root=str(home / "hub"), as_owner=True)
        hub.upload("flock/qa-eval", _jsonl(EVAL), private=False)
        chain.register("validator", stake=1000.0, validator_permit=True)
        uids = {label: chain.register(f"hk-{label}").uid for label in MINERS}
        for label, data in MINERS.items():
            revision = hub.upload(f"miner/{label}", data, private=False)
            chain.set_commitment(f"hk-{label}", Commitment(f"miner/{label}", "7", revision).to_compressed_str())
            chain.advance(1)
        epoch = chain.epoch_of(chain.current_block()) + 1
        chain.advance(chain.epoch_start(epoch) - chain.current_block())
        (home / "competitions.json").write_text(json.dumps([{"kind": "qa", "name": "qa"}]))
        resources = build_resources(home)
        run_epoch(epoch, resources, dg.DagsterInstance.ephemeral())
        scores = {r.hotkey.removeprefix("hk-"): r for r in resources["store"].scores(epoch)}
        yield resources, epoch, scores, uids


def test_the_game_runs_through_a_whole_local_epoch(qa_epoch):
    resources, epoch, scores, uids = qa_epoch
    assert set(scores) == set(MINERS)
    assert scores["knows-six"].status == "scored" and scores["knows-six"].eval_loss == pytest.approx(6 / 8)
    assert scores["knows-two"].status == "scored" and scores["knows-two"].eval_loss == pytest.approx(2 / 8)
    # higher is better: the larger accuracy takes the weight, not the lower number
    assert scores["knows-six"].weight == pytest.approx(1.0) and scores["knows-two"].weight == 0.0
    assert sum(r.weight for r in scores.values()) == pytest.approx(1.0)
    assert scores["wrong-answers"].status == "no_improvement" and scores["wrong-answers"].weight == 0.0
    assert "not above the base model's 0.00" in scores["wrong-answers"].reason


def test_the_games_row_format_and_copy_rules_apply(qa_epoch):
    resources, epoch, scores, _ = qa_epoch
    assert scores["chat-rows"].status == "ineligible" and "a qa row is" in scores["chat-rows"].reason
    assert scores["copier"].status == "ineligible" and "committed earlier by another miner" in scores["copier"].reason
    assert scores["leaker"].status == "ineligible" and "eval leakage" in scores["leaker"].reason
    shards = {s.hotkey.removeprefix("hk-"): s for s in resources["store"].epoch_shards(epoch)}
    assert (shards["knows-six"].rows_kept, shards["leaker"].eval_leaks) == (8, 8)


def test_the_weights_reach_the_chain_and_the_results_name_the_objective(qa_epoch):
    from flock_pipeline.validator.evaluation import miner_shard, shard_cache_key

    resources, epoch, scores, uids = qa_epoch
    landed = resources["chain"].stored_weights("validator")
    assert landed and max(landed, key=landed.get) == uids["knows-six"]
    assert {uid for uid, w in landed.items() if w} == {uids["knows-six"]}
    found = miner_shard(resources["store"], "hk-knows-six", epoch)
    key = shard_cache_key(found.shard, found.eval_revision, resources["evaluator"], resources["settings"])
    result = resources["store"].eval_result(key)
    assert result.metrics == {"correct": 6} and result.provenance["recipe"]["objective"] == "exact-match"
