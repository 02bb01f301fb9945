"""Table tests for flock_pipeline.core.commitment: encoding and strict decoding of on-chain commitments."""

from __future__ import annotations

import pytest

from flock_pipeline.core.commitment import (
    DEFAULT_COMPETITION_ID,
    MAX_COMMITMENT_BYTES,
    Commitment,
    CommitmentError,
    validate_repo_id,
    validate_revision,
)

REV = "0123456789abcdef0123456789abcdef01234567"
assert len(REV) == 40


@pytest.mark.parametrize(
    "repo_id, competition_id, revision",
    [
        pytest.param("alice/atlas-data", "1", REV, id="simple"),
        pytest.param("Org_1/my.data_set-v2", "comp_A-1", "f" * 40, id="allowed-punctuation"),
        pytest.param("a/b", "x", "0" * 40, id="shortest-parts"),
        pytest.param("n" * 40 + "/" + "r" * 40, "1", REV, id="long-but-fits"),
    ],
)
def test_round_trip(repo_id, competition_id, revision):
    c = Commitment(repo_id, competition_id, revision)
    text = c.to_compressed_str()
    assert text == f"{repo_id}:{competition_id}:{revision}"
    assert Commitment.from_compressed_str(text) == c
    assert Commitment.from_compressed_str(text.encode("utf-8")) == c


def test_decode_strips_surrounding_whitespace():
    c = Commitment.from_compressed_str(f"  alice/data:1:{REV}\n")
    assert c == Commitment("alice/data", "1", REV)


def test_default_competition_id_is_valid():
    assert Commitment("alice/data", DEFAULT_COMPETITION_ID, REV).competition_id == "1"


def test_exactly_max_bytes_accepted():
    # 128 bytes in all: repo "a/<name>" + ":1:" + 40 hex
    name_len = MAX_COMMITMENT_BYTES - len("a/") - len(":1:") - 40
    assert name_len <= 96
    text = f"a/{'n' * name_len}:1:{REV}"
    assert len(text.encode()) == MAX_COMMITMENT_BYTES
    assert Commitment.from_compressed_str(text).repo_id == f"a/{'n' * name_len}"


@pytest.mark.parametrize(
    "data, reason_part",
    [
        # structure
        pytest.param(f"alice/data:{REV}", "must be 'namespace/repo:competition:revision'", id="two-parts"),
        pytest.param(f"alice/data:1:{REV}:x", "must be 'namespace/repo:competition:revision'", id="four-parts"),
        pytest.param("", "must be 'namespace/repo:competition:revision'", id="empty"),
        pytest.param("alice/data", "must be 'namespace/repo:competition:revision'", id="one-part"),
        # revision
        pytest.param("alice/data:1:0123abc", "not a full 40-hex commit id", id="short-revision"),
        pytest.param(f"alice/data:1:{REV}0", "not a full 40-hex commit id", id="41-hex"),
        pytest.param("alice/data:1:main", "not a full 40-hex commit id", id="branch-main"),
        pytest.param("alice/data:1:refs/heads/main", "not a full 40-hex commit id", id="ref-path"),
        pytest.param(f"alice/data:1:{REV.upper()}", "not a full 40-hex commit id", id="uppercase-hex"),
        pytest.param(f"alice/data:1:{'g' * 40}", "not a full 40-hex commit id", id="non-hex"),
        pytest.param("alice/data:1:", "not a full 40-hex commit id", id="empty-revision"),
        # repo id
        pytest.param(f"alice/..:1:{REV}", "invalid part", id="dotdot-name"),
        pytest.param(f"alice/a..b:1:{REV}", "invalid part", id="dotdot-inside"),
        pytest.param(f"../data:1:{REV}", "invalid part", id="dotdot-namespace"),
        pytest.param(f"/etc/passwd:1:{REV}", "must be 'namespace/name'", id="absolute-path"),
        pytest.param(f"/data:1:{REV}", "invalid part", id="absolute-single"),
        pytest.param(f"alice/data/x:1:{REV}", "must be 'namespace/name'", id="three-segments"),
        pytest.param(f"data:1:{REV}", "must be 'namespace/name'", id="missing-namespace"),
        pytest.param(f"alice/:1:{REV}", "invalid part", id="empty-name"),
        pytest.param(f".hidden/data:1:{REV}", "invalid part", id="leading-dot"),
        pytest.param(f"alice/-data:1:{REV}", "invalid part", id="leading-dash"),
        pytest.param(f"alice/data.git:1:{REV}", "invalid part", id="dot-git"),
        pytest.param(f"alice/da ta:1:{REV}", "invalid part", id="space"),
        pytest.param(f"alice\\data:1:{REV}", "must be 'namespace/name'", id="backslash"),
        pytest.param(f"alice/d%2e%2e:1:{REV}", "invalid part", id="percent-encoding"),
        # competition id
        pytest.param(f"alice/data::{REV}", "competition id '' is invalid", id="empty-competition"),
        pytest.param(f"alice/data:c d:{REV}", "competition id 'c d' is invalid", id="space-competition"),
        pytest.param(f"alice/data:{'c' * 33}:{REV}", "is invalid", id="competition-too-long"),
        pytest.param(f"alice/data:c/1:{REV}", "is invalid", id="slash-competition"),
        # size
        pytest.param(f"a/{'n' * 84}:1:{REV}", "longer than 128 bytes", id="129-bytes"),
        pytest.param(f"a/{'n' * 90}:1:{REV}", "longer than 128 bytes", id="over-128-bytes"),
        pytest.param(f"a/data:1:{REV}" + " " * 200, "longer than 128 bytes", id="padded-over-128"),
    ],
)
def test_decode_rejects(data, reason_part):
    with pytest.raises(CommitmentError) as info:
        Commitment.from_compressed_str(data)
    assert reason_part in str(info.value)


@pytest.mark.parametrize(
    "data, reason_part",
    [
        pytest.param(b"alice/data:1:" + REV.encode()[:-1] + b"\xff", "not UTF-8", id="invalid-utf8"),
        pytest.param(b"\xc3(", "not UTF-8", id="bad-continuation"),
        pytest.param(b"a/" + b"n" * 200 + b":1:" + REV.encode(), "245 bytes, limit 128", id="bytes-over-128"),
        pytest.param(f"a/é:1:{REV}".encode(), "invalid part", id="non-ascii-name"),
    ],
)
def test_decode_bytes_rejects(data, reason_part):
    with pytest.raises(CommitmentError) as info:
        Commitment.from_compressed_str(data)
    assert reason_part in str(info.value)


@pytest.mark.parametrize("data", [None, 123, ["a/b", "1", REV]])
def test_decode_rejects_non_text(data):
    with pytest.raises(CommitmentError, match="must be text"):
        Commitment.from_compressed_str(data)


def test_multibyte_text_counted_in_bytes():
    # 60 two-byte characters: 60 characters but 120 bytes of name -> over 128 bytes in all
    text = f"a/{'é' * 60}:1:{REV}"
    assert len(text) < MAX_COMMITMENT_BYTES < len(text.encode())
    with pytest.raises(CommitmentError, match="longer than 128 bytes"):
        Commitment.from_compressed_str(text)


@pytest.mark.parametrize(
    "kwargs, reason_part",
    [
        pytest.param(dict(repo_id="alice/data", competition_id="1", revision="main"), "40-hex", id="branch"),
        pytest.param(dict(repo_id="alice", competition_id="1", revision=REV), "namespace/name", id="no-namespace"),
        pytest.param(dict(repo_id="alice/data", competition_id="", revision=REV), "competition id", id="competition"),
        pytest.param(dict(repo_id="alice/data", competition_id="1:2", revision=REV), "competition id",
                     id="colon-in-competition"),
        pytest.param(dict(repo_id=f"a/{'n' * 90}", competition_id="1", revision=REV), "longer than 128",
                     id="too-long"),
    ],
)
def test_constructor_validates(kwargs, reason_part):
    with pytest.raises(CommitmentError, match=reason_part):
        Commitment(**kwargs)


@pytest.mark.parametrize(
    "repo_id, ok",
    [
        pytest.param(f"{'n' * 96}/{'r' * 96}", True, id="parts-at-96"),
        pytest.param(f"alice/{'r' * 97}", False, id="name-over-96"),
        pytest.param(f"{'n' * 97}/data", False, id="namespace-over-96"),
        pytest.param("alice/data.", True, id="trailing-dot-allowed"),
        pytest.param("alice/.data", False, id="leading-dot"),
        pytest.param("alice/data..", False, id="trailing-dotdot"),
        pytest.param("alice/data.git", False, id="dot-git"),
        pytest.param("alice/data.gitx", True, id="dot-gitx"),
    ],
)
def test_validate_repo_id_table(repo_id, ok):
    if ok:
        assert validate_repo_id(repo_id) == repo_id
    else:
        with pytest.raises(CommitmentError, match="invalid part"):
            validate_repo_id(repo_id)


@pytest.mark.parametrize("value", [None, 5, b"alice/data"])
def test_validate_repo_id_non_string(value):
    with pytest.raises(CommitmentError, match="must be a string"):
        validate_repo_id(value)


@pytest.mark.parametrize("value", [None, 0, b"0" * 40])
def test_validate_revision_non_string(value):
    with pytest.raises(CommitmentError, match="40-hex"):
        validate_revision(value)


def test_validators_return_input():
    assert validate_repo_id("alice/data") == "alice/data"
    assert validate_revision(REV) == REV


def test_commitment_error_is_value_error():
    assert issubclass(CommitmentError, ValueError)


# ---------------------------------------------------------------------------------------------------------------
# Regressions: bugs found and fixed


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(f"alice/data\n:1:{REV}", id="newline-in-repo-id"),
        pytest.param(f"alice/data:1\n:{REV}", id="newline-in-competition"),
    ],
)
def test_embedded_newline_rejected(data):
    with pytest.raises(CommitmentError):
        Commitment.from_compressed_str(data)


def test_revision_with_trailing_newline_rejected():
    with pytest.raises(CommitmentError):
        Commitment("alice/data", "1", REV + "\n")
