"""`flock miner ...`: validate, score, submit, status -- every subcommand, including the failure paths."""

import json
from pathlib import Path

import pytest

from flock_pipeline.cli import main
from flock_pipeline.core import synthetic
from flock_pipeline.core.schema import rows_to_jsonl
from flock_pipeline.demo import demo_miners, seed_demo_network


@pytest.fixture
def network(flock_home, monkeypatch):
    """A seeded local network, with FLOCK_HOME pointing at it and a registered miner hotkey."""
    seed_demo_network(flock_home)
    monkeypatch.setenv("FLOCK_HOME", str(flock_home))
    monkeypatch.setenv("FLOCK_MINER_HOTKEY", "hk-new-miner")
    assert main(["chain", "register", "hk-new-miner"]) == 0
    return flock_home


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


BAD_INPUTS = {
    "not-utf8": b'{"conversations": [{"role": "user", "content": "\xff\xfe"}]}\n',
    "not-json": b"hello world\n",
    "wrong-types": b'{"system": 5, "conversations": "no"}\n',
    "huge-line": b'{"conversations": [{"role": "user", "content": "' + b"x" * (10 * 2**20) + b'"}]}\n',
    "binary": bytes(range(256)) * 4,
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_validate_reports_bad_input_without_traceback(network, tmp_path, capsys, name):
    code, out, err = _run(capsys, "miner", "validate", _write(tmp_path / f"{name}.jsonl", BAD_INPUTS[name]),
                          "--json")
    doc = json.loads(out)
    assert code == 1 and doc["valid"] is False and "Traceback" not in err
    assert doc["reason"] or doc["rejected"]
    assert {"valid", "rows_total", "rows_used", "rejected", "duplicates", "eval_overlap"} <= set(doc)


def test_validate_a_directory_and_a_missing_file(network, tmp_path, capsys):
    """Not a file to validate at all: a usage error (exit 2, one line), not an invalid dataset (exit 1)."""
    for target, why in ((str(tmp_path), "is a directory"), (str(tmp_path / "missing.jsonl"), "no such file")):
        code, out, err = _run(capsys, "miner", "validate", target, "--json")
        assert code == 2 and out == "" and why in err and err.count("\n") == 1


def test_validate_lines_duplicates_eval_overlap_and_size_cap(network, tmp_path, capsys):
    atlas = synthetic.make_atlas(7)
    rows = synthetic.honest_rows(atlas, 110, 3)
    leak = synthetic.eval_rows(atlas)[0]
    text = rows_to_jsonl([leak, rows[0], rows[0]] + rows[1:110]) + '{"conversations": []}\n'
    code, out, _ = _run(capsys, "miner", "validate", _write(tmp_path / "d.jsonl", text.encode()), "--json")
    doc = json.loads(out)
    assert code == 1  # one rejected row
    assert doc["rows_total"] == 113 and doc["rows_valid"] == 112 and doc["rows_used"] == 100
    assert doc["rejected"] == [{"line": 113, "reason": "'conversations' is empty"}]
    assert doc["duplicates"] == [{"line": 3, "duplicate_of": 2}]
    assert doc["eval_overlap"] == [1]
    assert doc["tokens_used"] > 100 * 20


def test_validate_warns_on_invisible_and_look_alike_text_without_failing(network, tmp_path, capsys):
    import random

    rows = synthetic.honest_rows(synthetic.make_atlas(7), 5, 3)
    rng = random.Random(1)
    odd = [synthetic.disguise(rows[1], "invisible", rng), synthetic.disguise(rows[3], "homoglyph", rng)]
    path = _write(tmp_path / "d.jsonl", rows_to_jsonl([rows[0], odd[0], rows[2], odd[1], rows[4]]).encode())
    code, out, _ = _run(capsys, "miner", "validate", path, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["valid"] is True
    assert [w["line"] for w in doc["warnings"]] == [2, 4]
    assert "invisible characters" in doc["warnings"][0]["warning"]
    assert "mixing scripts" in doc["warnings"][1]["warning"]
    code, out, _ = _run(capsys, "miner", "validate", path)
    assert code == 0 and "line 2: warning: invisible characters" in out and "line 4: warning: words mixing" in out


def test_score_matches_the_validator_pipeline(network, tmp_path, capsys):
    """The same data and defaults give the same loss as the pipeline's evaluation of that miner."""
    from flock_pipeline.demo import epoch_report
    from flock_pipeline.resources import build_resources

    good = next(m for m in demo_miners() if m.label == "honest-good")
    off = next(m for m in demo_miners() if m.label == "weak-offdomain")
    code, out, _ = _run(capsys, "miner", "score", _write(tmp_path / "good.jsonl", good.data), "--against",
                        _write(tmp_path / "off.jsonl", off.data), "--json")
    doc = json.loads(out)
    assert code == 0
    ours, theirs = doc["results"]
    assert ours["win_rate"] == 1.0 and theirs["win_rate"] == 0.0
    assert ours["eval_loss"] < doc["base_eval_loss"] < theirs["eval_loss"]
    code, _, _ = _run(capsys, "epoch", "run")
    assert code == 0
    report = {m["hotkey"]: m for m in epoch_report(1, build_resources()["store"])}
    assert report[good.hotkey]["eval_loss"] == pytest.approx(ours["eval_loss"], abs=1e-6)
    assert report[off.hotkey]["eval_loss"] == pytest.approx(theirs["eval_loss"], abs=1e-6)


def test_submit_refuses_invalid_data_then_commits_once_and_goes_public(network, tmp_path, capsys, monkeypatch):
    from flock_pipeline.resources import LocalHubResource, build_resources

    bad = _write(tmp_path / "bad.jsonl", b'{"conversations": [{"role": "assistant", "content": "x"}]}\n')
    code, _, err = _run(capsys, "miner", "submit", bad, "--repo", "new/data")
    assert code == 1 and "refusing" in err
    data = rows_to_jsonl(synthetic.honest_rows(synthetic.make_atlas(7), 20, 42)).encode()
    good = _write(tmp_path / "good.jsonl", data)

    # the upload works but the chain write fails midway: the data stays private, nothing is committed
    from flock_pipeline.resources.chain import ChainError, LocalChainResource

    def chain_down(self, hotkey, text):
        raise ChainError("connection lost")

    monkeypatch.setattr(LocalChainResource, "set_commitment", chain_down)
    code, _, err = _run(capsys, "miner", "submit", good, "--repo", "new/data")
    assert code == 1 and "connection lost" in err
    resources = build_resources()
    reader = resources["hub"]
    owner = LocalHubResource(root=reader.root, as_owner=True)
    revision = owner.head("new/data")
    from flock_pipeline.resources.hub import HubError

    with pytest.raises(HubError):
        reader.download("new/data", revision)  # still private
    monkeypatch.undo()
    monkeypatch.setenv("FLOCK_HOME", str(network))
    monkeypatch.setenv("FLOCK_MINER_HOTKEY", "hk-new-miner")

    code, out, _ = _run(capsys, "miner", "submit", good, "--repo", "new/data", "--json")
    first = json.loads(out)
    assert code == 0 and first["committed_now"] and first["public"]
    assert reader.download("new/data", first["revision"]) == data
    code, out, _ = _run(capsys, "miner", "submit", good, "--repo", "new/data", "--json")
    again = json.loads(out)
    assert code == 0 and not again["committed_now"] and again["revision"] == first["revision"]
    mine = [c for c in resources["chain"].commitments() if c.hotkey == "hk-new-miner"]
    assert len(mine) == 1 and mine[0].block == first["block"]


def test_submit_from_an_unregistered_hotkey(network, tmp_path, capsys):
    data = rows_to_jsonl(synthetic.honest_rows(synthetic.make_atlas(7), 5, 1)).encode()
    code, _, err = _run(capsys, "miner", "submit", _write(tmp_path / "d.jsonl", data), "--repo", "x/y",
                        "--hotkey", "hk-nobody")
    assert code == 1 and "not registered" in err


def test_status_before_and_after_an_epoch(network, tmp_path, capsys, monkeypatch):
    code, out, _ = _run(capsys, "miner", "status", "--hotkey", "hk-honest-good", "--json")
    before = json.loads(out)
    assert code == 0 and before["commitment"].startswith("alice/atlas-facts:1:") and before["eval_loss"] is None
    monkeypatch.setenv("FLOCK_SETTINGS", json.dumps({"report_repo": "validator/flock-reports"}))
    assert _run(capsys, "epoch", "run")[0] == 0
    code, out, _ = _run(capsys, "miner", "status", "--hotkey", "hk-honest-good", "--json")
    after = json.loads(out)
    assert after["status"] == "scored" and after["weight"] > 0.9 and after["latest_epoch"] == 1
    # a miner's own machine: a fresh home with no store of the validator's, pointed at the same chain
    fresh = tmp_path / "miner-home"
    monkeypatch.setenv("FLOCK_HOME", str(fresh))
    monkeypatch.setenv("FLOCK_CHAIN_FILE", str(network / "chain.json"))
    monkeypatch.setenv("FLOCK_HUB_DIR", str(network / "hub"))
    monkeypatch.delenv("FLOCK_SETTINGS")
    code, out, _ = _run(capsys, "miner", "status", "--hotkey", "hk-honest-good", "--json",
                        "--reports", "validator/flock-reports", "--reports", "nobody/none")
    remote = json.loads(out)
    published, missing = remote["reports"]
    assert published["eval_loss"] == pytest.approx(after["eval_loss"]) and published["rank"] == 1
    assert published["status"] == "scored" and published["epoch"] == 1 and published["validator"] == "validator"
    assert "error" in missing and missing["repo"] == "nobody/none"
    assert _run(capsys, "miner", "status", "--hotkey", "hk-honest-good", "--reports", "not a repo")[0] == 2
    assert code == 0 and remote["eval_loss"] is None and remote["status"] is None  # nothing local to read
    [validator] = remote["validators"]
    assert validator["hotkey"] == "validator" and validator["weight"] == remote["weight"]
    assert remote["weight"] == pytest.approx(after["weight"], abs=1e-4)  # what the validator recorded, from chain
    assert remote["incentive"] == pytest.approx(remote["weight"]) and remote["commitment"] == after["commitment"]
    assert not (fresh / "chain.json").exists()
    monkeypatch.setenv("FLOCK_HOME", str(network))
    monkeypatch.delenv("FLOCK_CHAIN_FILE")
    code, out, _ = _run(capsys, "chain", "weights")
    weights = json.loads(out)
    assert code == 0 and weights["submission"]["state"] == "applied" and weights["rules"]["permit"] is True
    assert weights["plan"]["uids"] == weights["submission"]["uids"]  # the same vector would go out again...
    assert "rate limited" in weights["plan"]["refusal"]  # ...once the rate limit allows
    code, out, _ = _run(capsys, "miner", "status", "--hotkey", "hk-ghost", "--json")
    assert code == 1 and json.loads(out)["registered"] is False
    monkeypatch.delenv("FLOCK_MINER_HOTKEY")
    code, _, err = _run(capsys, "miner", "status")
    assert code == 2 and "FLOCK_MINER_HOTKEY" in err


def test_an_upload_that_fails_midway_then_a_rerun(network, tmp_path, capsys, monkeypatch):
    """The hub dies during the upload: nothing is committed; the re-run uploads and commits once."""
    from flock_pipeline.resources import LocalHubResource, build_resources
    from flock_pipeline.resources.hub import HubError

    data = rows_to_jsonl(synthetic.honest_rows(synthetic.make_atlas(7), 10, 77)).encode()
    path = _write(tmp_path / "d.jsonl", data)
    real_upload = LocalHubResource.upload

    def broken_upload(self, repo_id, data, filename="data.jsonl", private=True):
        raise HubError("connection reset during upload", transient=True)

    monkeypatch.setattr(LocalHubResource, "upload", broken_upload)
    code, _, err = _run(capsys, "miner", "submit", path, "--repo", "new/retry")
    assert code == 1 and "nothing was committed" in err and "Traceback" not in err
    assert not [c for c in build_resources()["chain"].commitments() if c.hotkey == "hk-new-miner"]
    monkeypatch.setattr(LocalHubResource, "upload", real_upload)
    code, out, _ = _run(capsys, "miner", "submit", path, "--repo", "new/retry", "--json")
    assert code == 0 and json.loads(out)["committed_now"]
    assert len([c for c in build_resources()["chain"].commitments() if c.hotkey == "hk-new-miner"]) == 1


def test_status_shows_another_validators_hostile_report_safely(network, capsys):
    """Another validator's reports.json is untrusted: escape sequences reach the terminal escaped, fields of the
    wrong type become null, NaN never reaches the JSON output, and a file nested thousands deep is that repo's error
    (not a crash)."""
    from flock_pipeline.resources import LocalHubResource
    from flock_pipeline.validator.reports import REPORT_FILE

    hub = LocalHubResource(root=str(network / "hub"), as_owner=True)
    row = {"hotkey": "hk-honest-good", "status": "scored\x1b[2J\x1b]0;owned\x07", "reason": "fine\rALL WEIGHT TO ME",
           "eval_loss": float("nan"), "score": {"nested": [1]}, "weight": 1e309, "rank": "first"}
    hub.upload("evil/reports", json.dumps({"format": 1, "validator": "evil", "epochs": [
        {"epoch": 1, "miners": [row]}]}).encode(), filename=REPORT_FILE, private=False)
    hub.upload("deep/reports", b'{"format": 1, "epochs": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
               filename=REPORT_FILE, private=False)
    code, out, _ = _run(capsys, "miner", "status", "--hotkey", "hk-honest-good", "--reports", "evil/reports",
                        "--reports", "deep/reports")
    assert code == 0 and "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "scored\\x1b[2J" in out and "fine\\rALL WEIGHT TO ME" in out and "nested too deeply" in out
    code, out, _ = _run(capsys, "miner", "status", "--hotkey", "hk-honest-good", "--json", "--reports",
                        "evil/reports")
    assert "NaN" not in out and "Infinity" not in out
    [evil] = json.loads(out)["reports"]
    assert (evil["eval_loss"], evil["score"], evil["weight"], evil["rank"]) == (None, None, None, None)
