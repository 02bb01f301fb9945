"""The eval policy `after_commitments` on the local chain and hub: an epoch is scored on an eval revision published
after its commitment cut-off (until one is, it waits and records nothing), and a commitment made after the eval
revision it would be scored on was published is refused with the reason."""

import json

import pytest

from flock_pipeline.core.commitment import Commitment
from flock_pipeline.core.competitions import CompetitionConfigError, build_competitions
from flock_pipeline.core.schema import rows_to_jsonl
from flock_pipeline.demo import EVAL_REPO, eval_split, seed_demo_network
from flock_pipeline.resources import build_resources
from flock_pipeline.resources.hub import LocalHubResource
from flock_pipeline.validator.commitments import EvalNotPublished, eval_waiting, snapshot_commitments


def _network(home, **entry):
    seed_demo_network(home)
    (home / "competitions.json").write_text(json.dumps([{"kind": "curation", "name": "curation",
                                                         "eval_policy": "after_commitments", **entry}]))
    res = build_resources(home)
    return res["chain"], res["hub"], res["settings"], res["store"]


def test_an_epoch_waits_for_an_eval_revision_published_after_its_cut_off(tmp_path):
    home = tmp_path / "home"
    chain, hub, settings, store = _network(home)
    epoch = chain.epoch_of(chain.current_block())
    assert chain.current_block() == chain.epoch_start(epoch)  # the demo stops at the epoch's first block
    waiting = eval_waiting(epoch, chain.current_block(), chain, hub, settings, store)
    assert f"no revision of {EVAL_REPO} published after the commitment cut-off at block" in waiting
    with pytest.raises(EvalNotPublished):
        snapshot_commitments(epoch, chain, hub, settings, store)
    assert store.latest_epoch() is None  # nothing recorded while it waits
    chain.advance(1)
    scoring, _ = eval_split()
    fresh = LocalHubResource(root=str(home / "hub"), as_owner=True).upload(
        EVAL_REPO, rows_to_jsonl(scoring[::-1]).encode(), private=False)  # the eval set's next revision
    assert eval_waiting(epoch, chain.current_block(), chain, hub, settings, store) is None
    records = snapshot_commitments(epoch, chain, hub, settings, store)
    (recorded,) = store.epoch_competitions(epoch)
    assert recorded.eval_revision == fresh
    assert sum(r.status == "ok" for r in records) == 6  # every commitment predates the revision it is scored on


def test_a_commitment_made_after_the_eval_revision_was_published_is_refused(tmp_path):
    home = tmp_path / "home"
    pinned = json.loads(_seeded_revision(tmp_path / "probe"))
    chain, hub, settings, store = _network(home, eval_revision=pinned)
    epoch = chain.epoch_of(chain.current_block())
    assert eval_waiting(epoch, chain.current_block(), chain, hub, settings, store) is None  # seen at this block
    assert all(r.status == "ok" for r in snapshot_commitments(epoch, chain, hub, settings, store))
    chain.advance(2)
    chain.register("hk-after")
    owner = LocalHubResource(root=str(home / "hub"), as_owner=True)
    revision = owner.upload("after/atlas", rows_to_jsonl(eval_split()[0][:60]).encode(), private=False)
    block = chain.set_commitment("hk-after", Commitment("after/atlas", "1", revision).to_compressed_str())
    chain.advance(chain.epoch_start(epoch + 1) - chain.current_block())
    by_hotkey = {r.hotkey: r for r in snapshot_commitments(epoch + 1, chain, hub, settings, store)}
    assert by_hotkey["hk-after"].status == "rejected"
    assert by_hotkey["hk-after"].reason.startswith(f"committed at block {block}, after eval revision {pinned[:12]}")
    assert by_hotkey["hk-honest-good"].status == "ok"


def _seeded_revision(home) -> str:
    """The demo eval set's revision (the same rows give the same revision in every seeded home)."""
    seed_demo_network(home)
    return json.dumps(json.loads((home / "demo.json").read_text())["eval_revision"])


@pytest.mark.parametrize("entry, message", [
    ({"kind": "curation", "name": "c", "eval_policy": "later"}, "eval_policy must be one of head, after_commitments"),
    ({"kind": "selection", "name": "s", "eval_policy": "after_commitments"},
     "eval_policy after_commitments needs a held-out eval set scored per epoch"),
])
def test_a_wrong_eval_policy_names_the_field(entry, message):
    with pytest.raises(CompetitionConfigError, match=message):
        build_competitions([entry])
