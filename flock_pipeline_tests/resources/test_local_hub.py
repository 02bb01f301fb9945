import pytest

from flock_pipeline.core.commitment import CommitmentError
from flock_pipeline.resources.hub import HubError, HubNotFound, LocalHubResource


@pytest.fixture
def hubs(tmp_path):
    root = str(tmp_path / "hub")
    return LocalHubResource(root=root, as_owner=True), LocalHubResource(root=root)


def test_revisions_are_content_addressed_and_immutable(hubs):
    owner, reader = hubs
    r1 = owner.upload("ns/data", b"one\n", private=False)
    r2 = owner.upload("ns/data", b"two\n")
    assert len(r1) == 40 and r1 != r2
    assert reader.download("ns/data", r1) == b"one\n"
    assert reader.download("ns/data", r2) == b"two\n"
    assert reader.head("ns/data") == r2
    assert reader.file_info("ns/data", r1).size == 4


def test_private_repos_look_absent(hubs):
    owner, reader = hubs
    rev = owner.upload("ns/secret", b"x\n", private=True)
    with pytest.raises(HubNotFound):
        reader.download("ns/secret", rev)
    owner.set_private("ns/secret", False)
    assert reader.download("ns/secret", rev) == b"x\n"


def test_size_limit_is_checked_before_reading(hubs):
    owner, reader = hubs
    rev = owner.upload("ns/big", b"x" * 1000, private=False)
    with pytest.raises(HubError, match="limit 10"):
        reader.download("ns/big", rev, max_bytes=10)


@pytest.mark.parametrize("repo,revision", [
    ("../etc", "a" * 40), ("ns/..", "a" * 40), ("/abs/path", "a" * 40), ("ns/data", "main"), ("ns/data", "abc123"),
])
def test_path_tricks_and_loose_revisions_are_refused(hubs, repo, revision):
    _, reader = hubs
    with pytest.raises((CommitmentError, HubError)):
        reader.download(repo, revision)


def test_missing_file_and_repo(hubs):
    owner, reader = hubs
    rev = owner.upload("ns/data", b"x\n", private=False)
    with pytest.raises(HubNotFound):
        reader.download("ns/data", rev, filename="other.jsonl")
    with pytest.raises(HubNotFound):
        reader.download("ns/none", rev)
