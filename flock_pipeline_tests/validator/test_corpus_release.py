"""build_epoch_corpus over a recorded store (no training): the policy's miners, the two configs, the epoch and
`latest` releases and their loading with `datasets`, derived pairs and their cache, publication to a loopback hub
through the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pandas as pd
import pytest

from flock_pipeline.core.corpus import DPO, SFT, read_release
from flock_pipeline.core.schema import ChatRow, PreferenceRow, Turn
from flock_pipeline.resources import ConfigError, ValidatorSettingsResource, StoreResource, build_resources
from flock_pipeline.store import (CorpusRecord, EpochCompetitionRecord, EpochRecord, EvalResultRecord, ScoreRecord,
                                  ShardRecord, ShardRowRecord, utcnow)
from flock_pipeline.validator import corpus as corpus_step
from flock_pipeline.validator.corpus import build_epoch_corpus

EVAL_REPO, EVAL_REV, BASE_REV = "flock/eval-atlas", "e" * 40, "b" * 40


def chat(text: str, turns: int = 1) -> ChatRow:
    pairs = [(Turn("user", f"{text} q{i}?"), Turn("assistant", f"{text} a{i}.")) for i in range(turns)]
    return ChatRow(system="You are a helpful assistant.", turns=tuple(t for p in pairs for t in p))


def pref(text: str) -> PreferenceRow:
    return PreferenceRow(system="sys", prompt=(Turn("user", f"{text}?"),), chosen=f"{text} yes", rejected=f"{text} no")


def seed(store: StoreResource, epoch: int, miners: list[tuple], games=("curation",)) -> None:
    """miners: (uid, weight within its game, status, rows, game)."""
    store.record_epoch(EpochRecord(epoch, 100 * epoch, EVAL_REPO, EVAL_REV), [])
    store.record_epoch_competitions(epoch, [
        EpochCompetitionRecord(epoch, g, g, 1 / len(games), f"{EVAL_REPO}-{g}", EVAL_REV, "epoch", "scoring", 0)
        for g in games])
    scores = []
    for uid, weight, status, rows, game in miners:
        hotkey, loss = f"hk{uid}", 2.0 - weight
        shard_hash = hashlib.sha256(f"{epoch}{uid}{[r.row_hash for r in rows]}".encode()).hexdigest()
        store.record_shard(
            ShardRecord(epoch, hotkey, uid, f"m{uid}/data", f"{uid:040x}", 10 + uid, "eligible", None, len(rows),
                        len(rows), shard_hash=shard_hash, competition=game),
            [ShardRowRecord(shard_hash, i, r.row_hash, r.canonical_json()) for i, r in enumerate(rows)])
        store.record_eval_result(EvalResultRecord(
            f"k{shard_hash[:30]}", shard_hash, "ok", True, None, loss,
            provenance={"base_model": "flock/tiny-qwen2", "base_revision": BASE_REV}, created_at=utcnow()))
        scores.append(ScoreRecord(epoch, hotkey, uid, status, None, loss, weight, weight / len(games), game, weight))
    store.record_scores(epoch, scores)


@pytest.fixture
def home(tmp_path):
    return tmp_path


@pytest.fixture
def store(home):
    return StoreResource(url=f"duckdb://{home / 'warehouse.duckdb'}")


def settings(home: Path, **fields) -> ValidatorSettingsResource:
    return ValidatorSettingsResource(corpus_dir=str(home / "corpus"), **fields)


A, B, C, D, E = (chat(x) for x in "abcde")


def two_epochs(store):
    seed(store, 1, [(1, 0.70, "scored", [A, B], "curation"), (2, 0.29, "scored", [C], "curation"),
                        (3, 0.01, "scored", [D], "curation"), (4, 0.0, "no_improvement", [E], "curation")])
    seed(store, 2, [(1, 0.50, "scored", [A, B, D], "curation"), (5, 0.50, "scored", [C, E], "curation")])


def test_two_epochs_make_two_releases_and_a_latest_with_each_row_once(home, store):
    two_epochs(store)
    old = os.umask(0o077)  # world-readable whatever the umask
    try:
        first = build_epoch_corpus(1, settings(home), store)
        second = build_epoch_corpus(2, settings(home), store)
    finally:
        os.umask(old)
    corpus = home / "corpus"
    assert first.release_dir == str(corpus / "epoch-1") and second.release_dir == str(corpus / "epoch-2")
    e1 = read_release(Path(first.release_dir))
    # uid 3 holds 1 % of the weight (outside the 95 % the two best hold), uid 4 did not beat the base model
    assert {r["uid"] for r in e1[SFT]} == {1, 2} and (first.miners, first.rows, first.sft_rows) == (2, 3, 3)
    assert first.dpo_rows == 0 and e1[DPO] == []
    row = e1[SFT][0]
    assert row["competition"] == "curation" and row["epoch"] == 1 and row["miner_weight"] == pytest.approx(0.7)
    assert (row["base_model"], row["base_revision"]) == ("flock/tiny-qwen2", BASE_REV)
    assert (row["eval_repo"], row["eval_revision"]) == (f"{EVAL_REPO}-curation", EVAL_REV)
    assert first.latest_dir == second.latest_dir == str(corpus / "latest")

    latest = read_release(corpus / "latest")
    hashes = [r["row_hash"] for r in latest[SFT]]
    assert sorted(hashes) == sorted({x.row_hash for x in (A, B, C, D, E)}) and len(hashes) == len(set(hashes))
    by_hash = {r["row_hash"]: r for r in latest[SFT]}
    assert by_hash[A.row_hash]["epoch"] == 1 and by_hash[A.row_hash]["uid"] == 1  # 0.7 beats 0.5
    assert by_hash[C.row_hash]["uid"] == 5 and by_hash[C.row_hash]["epoch"] == 2  # 0.5 beats 0.29
    for path in [corpus, corpus / ".latest", corpus / "epoch-2", *(corpus / "epoch-2").rglob("*"),
                 *(corpus / "latest").rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
    card = (corpus / "latest" / "README.md").read_text()
    assert "- Epochs: 1-2" in card and "| 2 | 5 | `hk5` |" in card and "cc-by-4.0" in card

    # the same release again: nothing is written, the record is the same
    stamp = corpus.stat().st_mtime_ns, (corpus / "epoch-2").stat().st_mtime_ns, os.readlink(corpus / "latest")
    assert build_epoch_corpus(2, settings(home), store) == second
    assert (corpus.stat().st_mtime_ns, (corpus / "epoch-2").stat().st_mtime_ns, os.readlink(corpus / "latest")) \
        == stamp


def test_latest_loads_the_new_rows_after_it_moved_with_the_default_datasets_cache(home, store, monkeypatch):
    """`load_dataset(".../corpus/latest", "sft")` as the README and the card say, with `datasets`' own cache (no
    `cache_dir`): after the next epoch moves `latest`, the same call loads the new rows, not the cached old ones
    (`datasets` keys a local folder by its name, config and data files' names)."""
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "default-hf-cache"))  # where the default cache lives here
    two_epochs(store)
    latest = str(home / "corpus" / "latest")
    build_epoch_corpus(1, settings(home), store)
    first = datasets.load_dataset(latest, "sft", split="train").to_list()
    build_epoch_corpus(2, settings(home), store)
    second = datasets.load_dataset(latest, "sft", split="train").to_list()
    assert first == read_release(Path(home / "corpus" / "epoch-1"))[SFT]
    assert second == read_release(Path(latest))[SFT] and len(second) > len(first)


def test_the_releases_load_with_datasets_offline(home, store, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    two_epochs(store)
    build_epoch_corpus(1, settings(home), store)
    build_epoch_corpus(2, settings(home), store)
    cache = str(home / "hf-datasets")
    for folder in (home / "corpus" / "epoch-2", home / "corpus" / "latest"):
        expected = read_release(folder)
        sft = datasets.load_dataset(str(folder), "sft", split="train", cache_dir=cache)
        (sft_file,) = folder.glob("sft-*.parquet")
        files = datasets.load_dataset("parquet", data_files={"train": str(sft_file)}, split="train",
                                      cache_dir=cache)
        assert sft.to_list() == files.to_list() == expected[SFT]
        (pairs_file,) = folder.glob("dpo-*.parquet")  # no pairs: the file keeps the schema, the card omits the config
        assert "chosen" in pd.read_parquet(pairs_file).columns


def test_a_preference_competition_fills_the_dpo_config(home, store, monkeypatch):
    from flock_pipeline.core.rowformats import CHAT, PREFERENCE

    class Game:
        def __init__(self, name, row_format):
            self.name, self.kind, self.in_corpus, self.row_format = name, name, True, row_format

    class Games:
        competitions = [Game("curation", CHAT), Game("dpo", PREFERENCE)]

        def __iter__(self):
            return iter(self.competitions)

    monkeypatch.setattr(ValidatorSettingsResource, "competition_set", lambda self: Games())
    seed(store, 1, [(1, 1.0, "scored", [A], "curation"), (2, 0.8, "scored", [pref("x"), pref("y")], "dpo"),
                        (3, 0.2, "scored", [pref("z")], "dpo")], games=("curation", "dpo"))
    record = build_epoch_corpus(1, settings(home), store)
    release = read_release(Path(record.release_dir))
    assert [r["uid"] for r in release[SFT]] == [1]
    assert [(r["uid"], r["competition"], r["derived"]) for r in release[DPO]] == [(2, "dpo", False)] * 2 + [
        (3, "dpo", False)]
    assert release[DPO][0]["chosen"] == [{"role": "assistant", "content": "x yes"}]
    assert release[DPO][0]["eval_repo"] == f"{EVAL_REPO}-dpo" and (record.sft_rows, record.dpo_rows) == (1, 3)


def test_a_bad_policy_is_refused_when_the_settings_are_read(home, monkeypatch):
    with pytest.raises(ValueError, match="weight_coverage"):
        settings(home, corpus_policy='{"weight_coverage": 2}')
    with pytest.raises(ValueError, match="corpus_repo"):
        settings(home, corpus_repo="not a repo")
    monkeypatch.setenv("FLOCK_SETTINGS", '{"corpus_policy": "{\\"max_miners\\": -1}"}')
    with pytest.raises(ConfigError, match="max_miners"):
        build_resources(home / "flock")
    assert settings(home, corpus_policy='{"min_weight": 0.001}').corpus_policy_config().min_weight == 0.001


# -- derived pairs -------------------------------------------------------------------------------------------------


class FakeGenerator:
    """Stands in for greedy_answers: the base model "answers" `base: <question>`, or the miner's answer for
    questions starting with "echo" (a pair that is then left out). Records what it was asked."""

    def __init__(self):
        self.asked: list[str] = []

    def __call__(self, base, prompts, max_new_tokens, batch_size=8):
        assert base.revision and max_new_tokens == 8
        self.asked += [p.turns[0].content for p in prompts]
        return [p.turns[0].content.replace("q0?", "a0.") if p.turns[0].content.startswith("echo")
                else f"base: {p.turns[0].content}" for p in prompts]


def test_derived_pairs_are_generated_once_and_cached(home, store, tiny_model_dir, monkeypatch):
    from flock_pipeline.resources import EvaluatorResource

    fake = FakeGenerator()
    monkeypatch.setattr(corpus_step, "greedy_answers", fake)
    evaluator = EvaluatorResource(cache_dir=str(tiny_model_dir.parent), device="cpu")
    policy = '{"derive_dpo": true, "derive_max_new_tokens": 8}'
    long_row, echo = chat("long", turns=2), chat("echo")
    seed(store, 1, [(1, 1.0, "scored", [A, long_row, echo], "curation")])
    seed(store, 2, [(1, 0.6, "scored", [A, B], "curation"), (2, 0.4, "scored", [C], "curation")])
    with pytest.raises(ValueError, match="evaluator"):
        build_epoch_corpus(1, settings(home, corpus_policy=policy), store)
    first = build_epoch_corpus(1, settings(home, corpus_policy=policy), store, evaluator=evaluator)
    assert fake.asked == ["a q0?", "echo q0?"]  # single-turn rows only
    pairs = read_release(Path(first.release_dir))[DPO]
    [pair] = pairs  # the echoed answer equals the miner's: no pair
    assert pair["derived"] is True and pair["competition"] == "curation" and pair["uid"] == 1
    assert pair["chosen"] == [{"role": "assistant", "content": "a a0."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "base: a q0?"}]
    assert pair["base_model"] == "flock/tiny-qwen2" and len(pair["base_revision"]) == 40
    assert pair["row_hash"] == PreferenceRow.from_json_obj(pair).row_hash
    assert (home / "corpus" / "base-answers.jsonl").is_file()

    build_epoch_corpus(2, settings(home, corpus_policy=policy), store, evaluator=evaluator)
    assert fake.asked == ["a q0?", "echo q0?", "b q0?", "c q0?"]  # A's answer came from the cache
    build_epoch_corpus(2, settings(home, corpus_policy=policy), store, evaluator=evaluator)
    assert len(fake.asked) == 4
    latest = read_release(home / "corpus" / "latest")
    assert sorted(r["chosen"][0]["content"] for r in latest[DPO]) == ["a a0.", "b a0.", "c a0."]
    assert len({r["row_hash"] for r in latest[DPO]}) == 3


# -- publishing ----------------------------------------------------------------------------------------------------

TOKEN = "hf_CORPUSOWNER123"


@pytest.fixture
def hub_server(monkeypatch):
    import huggingface_hub

    from flock_pipeline_tests.resources.hf_server import FakeHubServer

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("TEST_CORPUS_TOKEN", TOKEN)
    with FakeHubServer(tokens={TOKEN: "alice"}) as server:
        yield server


def _hub(server, home):
    from flock_pipeline.resources.hf_hub import HuggingFaceHubResource

    return HuggingFaceHubResource(endpoint=server.url, token_env="TEST_CORPUS_TOKEN", cache_dir=str(home / "hc"),
                                  offline=False, backoff_s=0.001, max_retries=2)


def test_the_latest_release_is_published_in_one_commit_and_downloads_back_equal(home, store, hub_server):
    from huggingface_hub import hf_hub_download

    two_epochs(store)
    hub = _hub(hub_server, home)
    config = settings(home, corpus_repo="alice/flock-corpus")
    first = build_epoch_corpus(1, config, store, hub=hub)
    record = build_epoch_corpus(2, config, store, hub=hub)
    assert record.published_repo == "alice/flock-corpus" and len(record.published_revision) == 40
    assert store.corpus(2) == record and first.published_revision != record.published_revision
    repo = hub_server.repo("alice/flock-corpus")
    assert len(repo.commits) == 3 and not repo.private  # the repo's first commit, then one per release
    latest = home / "corpus" / "latest"
    names = ["README.md", *sorted(p.name for p in latest.glob("*.parquet")), "jsonl/sft.jsonl", "jsonl/dpo.jsonl"]
    assert len(names) == 5
    for name in names:
        path = hf_hub_download("alice/flock-corpus", name, repo_type="dataset", revision=record.published_revision,
                               endpoint=hub_server.url, token=False, cache_dir=str(home / "dl"))
        assert Path(path).read_bytes() == (latest / name).read_bytes(), name
    assert hub.download("alice/flock-corpus", record.published_revision, "README.md") == \
        (latest / "README.md").read_bytes()
    commits = len(repo.commits)
    build_epoch_corpus(2, config, store, hub=hub)  # published already: nothing is uploaded again
    assert len(repo.commits) == commits


def test_a_failed_upload_keeps_the_release_and_the_next_run_publishes(home, store, hub_server):
    from flock_pipeline.resources.hub import HubError

    two_epochs(store)
    hub = _hub(hub_server, home)
    config = settings(home, corpus_repo="alice/flock-corpus")
    hub_server.fail("/commit/", [500], forever=True)
    with pytest.raises(HubError) as error:
        build_epoch_corpus(1, config, store, hub=hub)
    assert error.value.transient
    kept = store.corpus(1)
    assert kept is not None and kept.published_revision is None and Path(kept.release_dir).is_dir()
    assert len(list((home / "corpus" / "latest").glob("sft-*.parquet"))) == 1
    hub_server.clear_faults()
    published = build_epoch_corpus(1, config, store, hub=hub)
    assert published.release_dir == kept.release_dir and published.sha256 == kept.sha256
    assert published.published_revision and store.rows(CorpusRecord)[0] == published
    assert sorted(p.name for p in (home / "corpus").iterdir() if p.name.startswith("epoch")) == ["epoch-1"]


def test_the_local_hub_takes_a_release_too(home, store):
    from flock_pipeline.resources.hub import LocalHubResource

    two_epochs(store)
    hub = LocalHubResource(root=str(home / "hub"), as_owner=True)
    record = build_epoch_corpus(1, settings(home, corpus_repo="flock/corpus"), store, hub=hub)
    (pairs_file,) = (home / "corpus" / "latest").glob("dpo-*.parquet")
    for name in ("README.md", pairs_file.name, "jsonl/sft.jsonl"):
        assert hub.download("flock/corpus", record.published_revision, name) == \
            (home / "corpus" / "latest" / name).read_bytes()


# -- releases never shrink or escape (what is on disk is untrusted) -------------------------------------------------


def _latest_rows(home) -> int:
    return len(read_release(home / "corpus" / "latest")[SFT])


def test_a_missing_earlier_release_stops_the_step_and_latest_keeps_its_rows(home, store):
    from flock_pipeline.errors import ResultsKept

    two_epochs(store)
    build_epoch_corpus(1, settings(home), store)
    before = _latest_rows(home)
    shutil.rmtree(home / "corpus" / "epoch-1")  # lost from disk; the store still records it
    with pytest.raises(ResultsKept, match=r"epoch 1's recorded release .*epoch-1 is missing or incomplete"):
        build_epoch_corpus(2, settings(home), store)
    assert _latest_rows(home) == before  # not rebuilt from what happens to be on disk
    build_epoch_corpus(2, settings(home, replace_results=True), store)  # the operator's choice: without it
    assert {r["epoch"] for r in read_release(home / "corpus" / "latest")[SFT]} == {2}


def test_a_garbled_release_file_is_named_in_the_error(home, store):
    from flock_pipeline.core.corpus import ReleaseError

    two_epochs(store)
    build_epoch_corpus(1, settings(home), store)
    path = home / "corpus" / "epoch-1" / "jsonl" / "sft.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ReleaseError, match=r"epoch-1/jsonl/sft\.jsonl, line \d+: not JSON"):
        build_epoch_corpus(2, settings(home), store)


def test_the_corpus_step_never_follows_a_link_out_of_its_folder(home, store, tmp_path_factory):
    from flock_pipeline.core.corpus import ReleaseError

    two_epochs(store)
    outside = tmp_path_factory.mktemp("someone-elses")
    (outside / "0123456789abcdef").mkdir()  # a folder named like a release, outside the corpus folder
    (outside / "0123456789abcdef" / "keep.txt").write_text("mine")
    (home / "corpus").mkdir(parents=True)
    (home / "corpus" / ".latest").symlink_to(outside)
    with pytest.raises(ReleaseError, match=r"\.latest is not a folder the corpus step wrote"):
        build_epoch_corpus(1, settings(home), store)
    assert (outside / "0123456789abcdef" / "keep.txt").read_text() == "mine" and len(list(outside.iterdir())) == 1


def test_a_plain_latest_folder_of_someone_elses_is_never_deleted(home, store):
    from flock_pipeline.core.corpus import ReleaseError

    two_epochs(store)
    notes = home / "corpus" / "latest"
    notes.mkdir(parents=True)
    (notes / "notes.txt").write_text("my notes")
    with pytest.raises(ReleaseError, match=r"latest is not a release the corpus step wrote"):
        build_epoch_corpus(1, settings(home), store)
    assert (notes / "notes.txt").read_text() == "my notes"
