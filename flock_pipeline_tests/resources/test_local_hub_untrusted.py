"""The embedded hub treats its own files as untrusted, like the real one: one bad entry makes that repo
unavailable, never a crash, a hang or a read of something outside the hub."""

import json
import os
import threading

import pytest

from flock_pipeline.resources.hub import HubError, LocalHubResource

ROW = b'{"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'


@pytest.fixture
def hub(tmp_path):
    owner = LocalHubResource(root=str(tmp_path / "hub"), as_owner=True)
    return owner


def _data_path(hub, repo, revision):
    return os.path.join(hub.root, repo, "revisions", revision, "data.jsonl")


def _within(seconds, fn):
    """Run fn in a thread; fail the test if it has not returned within `seconds` (a FIFO must not block it)."""
    box = {}
    thread = threading.Thread(target=lambda: box.update(result=_call(fn)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the hub blocked"
    return box["result"]


def _call(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the test inspects what was raised
        return exc


def test_a_fifo_named_data_jsonl_is_refused_without_blocking(hub):
    rev = hub.upload("a/fifo", ROW, private=False)
    path = _data_path(hub, "a/fifo", rev)
    os.unlink(path)
    os.mkfifo(path)
    error = _within(5, lambda: hub.download("a/fifo", rev, max_bytes=1000))
    assert isinstance(error, HubError) and "not a regular file" in str(error) and not error.transient


def test_a_directory_named_data_jsonl_is_refused(hub):
    rev = hub.upload("a/dir", ROW, private=False)
    path = _data_path(hub, "a/dir", rev)
    os.unlink(path)
    os.mkdir(path)
    with pytest.raises(HubError, match="not a regular file"):
        hub.file_info("a/dir", rev)


@pytest.mark.parametrize("target", ["outside", "/dev/urandom"])
def test_a_symlink_is_never_followed(hub, tmp_path, target):
    rev = hub.upload("a/link", ROW, private=False)
    path = _data_path(hub, "a/link", rev)
    os.unlink(path)
    if target == "outside":
        outside = tmp_path / "outside.jsonl"
        outside.write_bytes(ROW * 3)
        target = str(outside)
    os.symlink(target, path)
    for call in (lambda: hub.file_info("a/link", rev), lambda: hub.download("a/link", rev, max_bytes=10**6)):
        error = _within(5, call)
        assert isinstance(error, HubError) and "symbolic link" in str(error)


def test_a_symlinked_revision_directory_is_refused_too(hub, tmp_path):
    rev = hub.upload("a/linkdir", ROW, private=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.jsonl").write_bytes(ROW)
    rev_dir = os.path.dirname(_data_path(hub, "a/linkdir", rev))
    os.rename(rev_dir, str(tmp_path / "moved"))
    os.symlink(elsewhere, rev_dir)
    with pytest.raises(HubError, match="symbolic link"):
        hub.download("a/linkdir", rev)


@pytest.mark.parametrize("record", [b"{not json", b"[1, 2]", b'{"private": "no", "head": null}', b"\xff\xfe",
                                    json.dumps({"private": False, "head": 7}).encode()])
def test_a_garbled_repo_record_makes_the_repo_unavailable(hub, record):
    rev = hub.upload("a/garbled", ROW, private=False)
    with open(os.path.join(hub.root, "a/garbled", "repo.json"), "wb") as f:
        f.write(record)
    for call in (lambda: hub.head("a/garbled"), lambda: hub.download("a/garbled", rev)):
        with pytest.raises(HubError, match="garbled"):
            call()


def test_reads_are_capped(hub):
    rev = hub.upload("a/big", ROW * 100, private=False)
    with pytest.raises(HubError, match="limit 50"):
        hub.download("a/big", rev, max_bytes=50)
