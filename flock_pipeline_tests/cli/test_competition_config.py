"""A bad competitions document stops every entry point at start-up with exit 2 and the field, before any work."""

import json

import pytest

from flock_pipeline.cli import main

BAD = [
    pytest.param([{"kind": "curation", "scoring": {"mode": "curvy"}}], "scoring.mode: mode must be one of",
                 id="unknown scoring rule"),
    pytest.param([{"kind": "curation", "share": 0.5}, {"kind": "selection", "share": 0.4, "commitment_id": "2"}],
                 "shares must sum to 1", id="shares not summing to 1"),
    pytest.param([{"kind": "selection", "selection_size": 0}], "selection_size must be a positive whole number",
                 id="selection size 0"),
    pytest.param([{"kind": "tournament"}], "unknown kind 'tournament'", id="unknown kind"),
    pytest.param([{"kind": "selection", "recipe": {"learning_rat": 1e-4}}], "recipe: unknown recipe field(s)",
                 id="unknown recipe field"),
    pytest.param([{"kind": "selection", "recipe": {"quantization": "nf4"}}], "runs on CUDA only",
                 id="the 4-bit recipe on a CPU validator"),
]


@pytest.mark.parametrize("document, message", BAD)
def test_epoch_run_exits_2_naming_the_field_before_any_work(document, message, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("FLOCK_HOME", str(home))
    monkeypatch.setenv("FLOCK_DEVICE", "cpu")
    monkeypatch.setenv("FLOCK_COMPETITIONS", json.dumps(document))
    assert main(["epoch", "run", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("flock: configuration error:") and err.count("\n") == 1
    assert not home.exists()  # nothing read, fetched or written


def test_the_demo_checks_the_configuration_before_it_wipes_a_home(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".flock-demo").write_text("a demo home")  # one the demo may wipe, but not with a bad configuration
    (home / "warehouse.duckdb").write_text("a demo's store")
    monkeypatch.setenv("FLOCK_COMPETITIONS", "@" + str(tmp_path / "missing.json"))
    assert main(["demo", "--home", str(home)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert (home / "warehouse.duckdb").read_text() == "a demo's store"


def test_a_competitions_file_in_the_home_is_used(tmp_path, monkeypatch):
    from flock_pipeline.resources import build_resources

    home = tmp_path / "home"
    home.mkdir()
    (home / "competitions.json").write_text(json.dumps(
        [{"kind": "curation", "share": 0.25}, {"kind": "selection", "share": 0.75, "commitment_id": "2"}]))
    monkeypatch.delenv("FLOCK_COMPETITIONS", raising=False)
    competitions = build_resources(home)["settings"].competition_set()
    assert [(c.kind, c.share) for c in competitions] == [("curation", 0.25), ("selection", 0.75)]
    monkeypatch.setenv("FLOCK_COMPETITIONS", "curation")  # the environment wins over the file
    assert [c.kind for c in build_resources(home)["settings"].competition_set()] == ["curation"]
