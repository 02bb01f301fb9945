"""HuggingFaceHubResource against a loopback fake hub, through the real huggingface_hub 2.4.0 / httpx2 stack."""

from __future__ import annotations

import logging
import time
import traceback

import huggingface_hub
import pytest
from huggingface_hub import HfApi, hf_hub_download

from flock_pipeline.resources.hf_hub import HuggingFaceHubResource, scrub
from flock_pipeline.resources.hub import HubError, HubNotFound
from flock_pipeline_tests.resources.hf_server import FakeHubServer

OWNER_TOKEN = "hf_FAKESECRET123"  # alice: owns the alice/* repos
OTHER_TOKEN = "hf_OTHERreader456"  # bob: a validator with a token of its own
DATA = b'{"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
REPO = "alice/flock-data"


@pytest.fixture
def server():
    with FakeHubServer(tokens={OWNER_TOKEN: "alice", OTHER_TOKEN: "bob"}) as hub:
        yield hub


@pytest.fixture
def tokens(monkeypatch):
    monkeypatch.setenv("TEST_HF_OWNER_TOKEN", OWNER_TOKEN)
    monkeypatch.setenv("TEST_HF_OTHER_TOKEN", OTHER_TOKEN)
    monkeypatch.delenv("TEST_HF_NO_TOKEN", raising=False)


@pytest.fixture
def make_hub(server, tokens, tmp_path):
    """A resource per role, each with its own cache: 'owner' (alice), 'other' (bob), 'anon' (no token)."""
    envs = {"owner": "TEST_HF_OWNER_TOKEN", "other": "TEST_HF_OTHER_TOKEN", "anon": "TEST_HF_NO_TOKEN"}
    made: list[HuggingFaceHubResource] = []

    def make(role: str = "anon", **overrides) -> HuggingFaceHubResource:
        config = {"endpoint": server.url, "token_env": envs[role], "cache_dir": str(tmp_path / f"cache-{role}"),
                  "offline": False, "backoff_s": 0.001, "max_retries": 3, "timeout_s": 10.0, **overrides}
        made.append(HuggingFaceHubResource(**config))
        return made[-1]

    yield make
    for hub in made:
        hub.close()


@pytest.fixture
def published(server) -> str:
    server.add_repo(REPO)
    return server.commit(REPO, {"data.jsonl": DATA})


def resolve_requests(server: FakeHubServer, method: str | None = None):
    return server.requests_to("/resolve/", method)


# -- round trip ---------------------------------------------------------------------------------------------------


def test_upload_private_then_publish_round_trip(server, make_hub):
    owner, other, anon = make_hub("owner"), make_hub("other"), make_hub("anon")
    revision = owner.upload(REPO, DATA, private=True)
    assert len(revision) == 40 and server.repo(REPO).private and server.repo(REPO).head == revision
    assert server.file_bytes(REPO, revision, "data.jsonl") == DATA
    for reader in (other, anon):
        with pytest.raises(HubNotFound):
            reader.download(REPO, revision)
        with pytest.raises(HubNotFound):
            reader.head(REPO)
    assert owner.head(REPO) == revision  # the owner sees its private repo

    owner.set_private(REPO, False)
    assert not server.repo(REPO).private
    assert anon.download(REPO, revision) == DATA
    assert other.file_info(REPO, revision).size == len(DATA)
    assert anon.head(REPO) == revision


def test_upload_to_existing_repo_hides_it_and_keeps_old_revisions(server, make_hub):
    owner, anon = make_hub("owner"), make_hub("anon")
    first = owner.upload(REPO, DATA, private=False)
    assert not server.repo(REPO).private
    second = owner.upload(REPO, DATA + DATA, private=True)
    assert second != first and server.repo(REPO).private  # hidden until committed on chain and published
    owner.set_private(REPO, False)
    assert anon.download(REPO, first) == DATA
    assert anon.download(REPO, second) == DATA + DATA


def test_uploading_unchanged_bytes_returns_the_head_without_a_commit(server, make_hub):
    owner = make_hub("owner")
    revision = owner.upload(REPO, DATA)
    server.clear_requests()
    assert owner.upload(REPO, DATA) == revision
    assert server.requests_to("/commit/") == []


def test_upload_needs_a_token_and_the_owners_rights(server, make_hub):
    with pytest.raises(HubError, match="TEST_HF_NO_TOKEN") as anon_error:
        make_hub("anon").upload(REPO, DATA)
    assert not anon_error.value.transient and server.requests == []
    with pytest.raises(HubError) as other_error:  # bob may not create repos under alice
        make_hub("other").upload(REPO, DATA)
    assert not other_error.value.transient and REPO not in {r for _, r in server.repos}


def test_files_the_hub_stores_as_lfs_go_through_huggingface_hub(monkeypatch, make_hub, server):
    server.regular_max_bytes = 16
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE") as error:
        make_hub("owner").upload(REPO, DATA)
    assert not error.value.transient and server.requests_to("/commit/") == []


# -- metadata and size limits -------------------------------------------------------------------------------------


def test_file_info_reads_the_size_from_metadata_only(server, make_hub, published):
    info = make_hub().file_info(REPO, published)
    assert (info.repo_id, info.revision, info.filename, info.size) == (REPO, published, "data.jsonl", len(DATA))
    assert resolve_requests(server) == [] and len(server.requests_to("/paths-info/", "POST")) == 1


def test_lfs_files_report_the_lfs_size_and_are_verified(server, make_hub):
    server.add_repo(REPO)
    revision = server.commit(REPO, {"data.jsonl": DATA * 3}, lfs=True)
    hub = make_hub()
    assert hub.file_info(REPO, revision).size == len(DATA) * 3
    assert hub.download(REPO, revision) == DATA * 3


def test_a_declared_10gb_file_is_refused_from_metadata_alone(server, make_hub):
    server.add_repo(REPO)
    size = 10 * 2**30
    revision = server.add_declared_file(REPO, "data.jsonl", size)
    hub = make_hub()
    assert hub.file_info(REPO, revision).size == size
    with pytest.raises(HubError, match=f"{size} bytes, limit {64 * 2**20}") as error:
        hub.download(REPO, revision, max_bytes=64 * 2**20)
    assert not error.value.transient
    assert resolve_requests(server) == []  # neither GET nor HEAD of the file


def test_a_size_limit_applies_to_cached_files_too(make_hub, published):
    hub = make_hub()
    hub.download(REPO, published)
    with pytest.raises(HubError, match="limit 10"):
        hub.download(REPO, published, max_bytes=10)


@pytest.mark.parametrize("revision", ["main", "abc1234", "A" * 40, "g" * 40, "0" * 39, "0" * 41, "", "../" + "0" * 37])
def test_branch_names_and_short_ids_are_refused_without_a_request(server, make_hub, revision):
    hub = make_hub("owner")
    for call in (lambda: hub.file_info(REPO, revision), lambda: hub.download(REPO, revision)):
        with pytest.raises(HubError) as error:
            call()
        assert not error.value.transient and not isinstance(error.value, HubNotFound)
    assert server.requests == []


@pytest.mark.parametrize("repo_id", ["../x", "a/b/c", "a/..", "../../etc", "a/.hidden", "a/-x", "x", "a/b.git",
                                     "a/b c", "/a/b", "a/b/", "ns/na%2fme"])
def test_path_tricks_in_repo_ids_are_refused_without_a_request(server, make_hub, repo_id):
    hub = make_hub("owner")
    revision = "0" * 40
    calls = (lambda: hub.file_info(repo_id, revision), lambda: hub.download(repo_id, revision),
             lambda: hub.head(repo_id), lambda: hub.upload(repo_id, DATA), lambda: hub.set_private(repo_id, False))
    for call in calls:
        with pytest.raises(HubError) as error:
            call()
        assert not error.value.transient
    assert server.requests == []


@pytest.mark.parametrize("filename", ["../data.jsonl", "a/b.jsonl", ".hidden", "", "..", "data jsonl", "x" * 300])
def test_path_tricks_in_file_names_are_refused_without_a_request(server, make_hub, filename):
    hub = make_hub("owner")
    for call in (lambda: hub.download(REPO, "0" * 40, filename), lambda: hub.upload(REPO, DATA, filename)):
        with pytest.raises(HubError):
            call()
    assert server.requests == []


# -- not found ----------------------------------------------------------------------------------------------------


def test_missing_repo_revision_and_file_are_not_found(server, make_hub, published):
    hub = make_hub()
    with pytest.raises(HubNotFound, match="repository not found"):
        hub.download("alice/nothing-here", published)
    with pytest.raises(HubNotFound, match="revision not found"):
        hub.download(REPO, "1" * 40)
    with pytest.raises(HubNotFound, match="file not found"):
        hub.download(REPO, published, "other.jsonl")
    with pytest.raises(HubNotFound):
        hub.head("alice/nothing-here")


def test_gated_repos_are_not_found(server, make_hub):
    server.add_repo("alice/gated", gated=True)
    revision = server.commit("alice/gated", {"data.jsonl": DATA})
    with pytest.raises(HubNotFound, match="gated"):
        make_hub("other").file_info("alice/gated", revision)


def test_a_permanent_404_is_not_found_and_not_retried(server, make_hub, published):
    server.fail("/paths-info/", [404], forever=True)
    with pytest.raises(HubNotFound):
        make_hub().download(REPO, published)
    assert len(server.requests_to("/paths-info/")) == 1 and resolve_requests(server) == []


def test_other_client_errors_are_not_retried(server, make_hub, published):
    server.fail("/resolve/", [400], forever=True)
    with pytest.raises(HubError) as error:
        make_hub().download(REPO, published)
    assert not error.value.transient and len(resolve_requests(server)) == 1


# -- retries ------------------------------------------------------------------------------------------------------


def test_a_503_is_retried(server, make_hub, published):
    server.fail("/paths-info/", [503])
    server.fail("/resolve/", [502, 504])
    assert make_hub().download(REPO, published) == DATA
    assert len(server.requests_to("/paths-info/")) == 2 and len(resolve_requests(server, "GET")) == 3


def test_a_429_waits_for_retry_after(server, make_hub, published):
    server.fail("/resolve/", [429], headers={"Retry-After": "1"})
    start = time.monotonic()
    assert make_hub(backoff_s=0.0).download(REPO, published) == DATA
    assert time.monotonic() - start >= 0.95 and len(resolve_requests(server, "GET")) == 2


def test_a_long_retry_after_gives_up_at_once_as_transient(server, make_hub, published):
    server.fail("/paths-info/", [429], forever=True, headers={"Retry-After": "3600"})
    with pytest.raises(HubError, match="retry after 3600") as error:
        make_hub().file_info(REPO, published)
    assert error.value.transient and len(server.requests_to("/paths-info/")) == 1


def test_a_500_forever_is_transient_after_max_retries(server, make_hub, published):
    server.fail("/paths-info/", [500], forever=True)
    with pytest.raises(HubError, match="HTTP 500.*3 attempts") as error:
        make_hub(max_retries=2).download(REPO, published)
    assert error.value.transient and not isinstance(error.value, HubNotFound)
    assert len(server.requests_to("/paths-info/")) == 3


def test_an_unreachable_hub_is_transient(make_hub, tmp_path, tokens):
    with FakeHubServer() as gone:
        url = gone.url
    hub = HuggingFaceHubResource(endpoint=url, token_env="TEST_HF_OWNER_TOKEN", cache_dir=str(tmp_path / "c"),
                                 offline=False, backoff_s=0.001, max_retries=1, timeout_s=2.0)
    with pytest.raises(HubError, match="ConnectError") as error:
        hub.head(REPO)
    assert error.value.transient


def test_a_truncated_body_is_retried_then_transient(server, make_hub, published, tmp_path):
    server.truncate("/resolve/")
    assert make_hub().download(REPO, published) == DATA  # cut once, whole on the retry
    assert len(resolve_requests(server, "GET")) == 2

    server.truncate("/resolve/", times=None)
    with pytest.raises(HubError, match="3 attempts") as error:
        make_hub(max_retries=2, cache_dir=str(tmp_path / "fresh")).download(REPO, published)
    assert error.value.transient
    assert not any(p.is_file() for p in (tmp_path / "fresh").rglob("*"))  # nothing partial cached


# -- cache and offline --------------------------------------------------------------------------------------------


def test_a_cache_hit_makes_no_request(server, make_hub, published):
    hub = make_hub()
    assert hub.download(REPO, published) == DATA
    server.clear_requests()
    assert hub.download(REPO, published) == DATA
    assert hub.file_info(REPO, published).size == len(DATA)
    assert server.requests == []


def test_offline_serves_the_cache_and_refuses_a_miss(server, make_hub, published, tmp_path):
    cache = str(tmp_path / "shared")
    make_hub(cache_dir=cache).download(REPO, published)
    server.clear_requests()
    offline = make_hub(cache_dir=cache, offline=True)
    assert offline.download(REPO, published) == DATA
    assert offline.file_info(REPO, published).size == len(DATA)
    for call in (lambda: offline.download(REPO, "2" * 40), lambda: offline.file_info(REPO, "2" * 40),
                 lambda: offline.head(REPO), lambda: make_hub("owner", offline=True).upload(REPO, DATA)):
        with pytest.raises(HubError, match="offline") as error:
            call()
        assert not error.value.transient
    assert server.requests == []


def test_unset_offline_follows_hf_hub_offline(server, make_hub, published, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="offline"):
        make_hub(offline=None).download(REPO, published)
    assert server.requests == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert make_hub(offline=None).download(REPO, published) == DATA


def test_offline_false_works_while_huggingface_hub_is_offline(monkeypatch, make_hub, published):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert make_hub(offline=False).download(REPO, published) == DATA


# -- secrets ------------------------------------------------------------------------------------------------------


def _failure_texts(error: BaseException) -> str:
    return "\n".join([str(error), repr(error), *traceback.format_exception(error)])


def test_the_token_never_appears_in_errors_or_logs(server, make_hub, published, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    owner = make_hub("owner")
    server.add_repo("alice/private", private=True)
    failures = []

    def expect_failure(call) -> None:
        with pytest.raises(HubError) as error:
            call()
        failures.append(error.value)

    server.fail("/paths-info/", [500], forever=True)
    expect_failure(lambda: owner.download(REPO, published))
    server.clear_faults()
    server.fail("/resolve/", [403], forever=True, message=f"token {OWNER_TOKEN} may not read this")  # echoed back
    expect_failure(lambda: owner.download(REPO, published))
    server.clear_faults()
    server.truncate("/resolve/", times=None)
    expect_failure(lambda: owner.download(REPO, published))
    server.clear_faults()
    expect_failure(lambda: owner.download(REPO, "3" * 40))
    expect_failure(lambda: make_hub("other").upload("alice/private", DATA))
    monkeypatch.setenv("TEST_HF_OWNER_TOKEN", OWNER_TOKEN + "x")  # a token the hub rejects
    expect_failure(lambda: make_hub("owner").download(REPO, published))
    expect_failure(lambda: make_hub("owner").set_private(REPO, True))

    assert len(failures) == 7 and "rejected the token in TEST_HF_OWNER_TOKEN" in str(failures[-2])
    assert "token *** may not read this" in str(failures[1])
    for failure in failures:
        assert OWNER_TOKEN not in _failure_texts(failure)
    assert caplog.records and OWNER_TOKEN not in caplog.text
    assert all(OWNER_TOKEN not in str(record.args) for record in caplog.records)
    assert any(r.headers.get("authorization") == f"Bearer {OWNER_TOKEN}" for r in server.requests)  # it was sent


def test_scrub_removes_the_token_and_bearer_credentials():
    text = f"failed with {OWNER_TOKEN} (Authorization: Bearer hf_anotherSecret999)"
    cleaned = scrub(text, OWNER_TOKEN, None)
    assert OWNER_TOKEN not in cleaned and "hf_anotherSecret999" not in cleaned and "***" in cleaned


def test_the_token_is_no_config_field(tmp_path):
    assert "token" not in HuggingFaceHubResource.model_fields
    hub = HuggingFaceHubResource(cache_dir=str(tmp_path))
    assert hub.token_env == "HF_TOKEN" and hub.endpoint == "https://huggingface.co" and hub.repo_type == "dataset"


# -- the fake hub answers the real client -------------------------------------------------------------------------


def test_the_fake_hub_serves_huggingface_hubs_own_client(server, monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    api = HfApi(endpoint=server.url, token=OWNER_TOKEN)
    api.create_repo(REPO, repo_type="dataset", private=True)
    api.create_repo(REPO, repo_type="dataset", private=True, exist_ok=True)
    commit = api.upload_file(path_or_fileobj=DATA, path_in_repo="data.jsonl", repo_id=REPO, repo_type="dataset")
    assert len(commit.oid) == 40
    info = api.dataset_info(REPO, revision=commit.oid)
    assert info.sha == commit.oid and info.private and "data.jsonl" in [s.rfilename for s in info.siblings]
    [entry] = api.get_paths_info(REPO, ["data.jsonl"], revision=commit.oid, repo_type="dataset")
    assert entry.size == len(DATA)
    api.update_repo_settings(REPO, private=False, repo_type="dataset")
    path = hf_hub_download(REPO, "data.jsonl", repo_type="dataset", revision=commit.oid, endpoint=server.url,
                           token=False, cache_dir=str(tmp_path / "hf-cache"))
    assert open(path, "rb").read() == DATA
    with pytest.raises(huggingface_hub.errors.RepositoryNotFoundError):
        HfApi(endpoint=server.url, token=False).dataset_info("alice/missing")


def test_a_garbled_cached_download_is_dropped_and_fetched_again(server, make_hub, published, tmp_path):
    hub = make_hub()
    assert hub.download(REPO, published) == DATA
    cached = next(p for p in (tmp_path / "cache-anon").rglob("data.jsonl"))
    cached.write_bytes(b'{"garbled": true}\n' + DATA[18:])  # same size, other bytes
    server.clear_requests()
    assert hub.download(REPO, published) == DATA  # never the garbled bytes
    assert len(resolve_requests(server, "GET")) == 1  # fetched again
    assert hub.download(REPO, published) == DATA and len(resolve_requests(server, "GET")) == 1  # cached again


def test_a_cached_file_without_its_digest_is_fetched_again(server, make_hub, published, tmp_path):
    hub = make_hub()
    hub.download(REPO, published)
    next(p for p in (tmp_path / "cache-anon").rglob("data.jsonl.sha256")).unlink()  # a crash between the two writes
    server.clear_requests()
    assert hub.download(REPO, published) == DATA and len(resolve_requests(server, "GET")) == 1
