"""The Hugging Face Hub backend of `HubResource`.

Requests go through the resource's own `httpx2` client (the HTTP library huggingface_hub itself uses), not through
huggingface_hub's shared session: that session refuses every request while `HF_HUB_OFFLINE=1`, a process-wide switch
read once at import that the CLI and the tests set for transformers. Here the resource's `offline` field decides;
left unset (None) it follows `HF_HUB_OFFLINE` from the environment at call time. huggingface_hub supplies the
protocol: URLs, headers, error classification (`hf_raise_for_status`), file metadata (`RepoFile`) and, for files the
hub wants stored as LFS/Xet objects (large ones), the whole commit (`HfApi.create_commit`), which does obey
`HF_HUB_OFFLINE`.

Every repo id, revision and file name is validated before it reaches a URL or a path. The token is read from the
environment variable named by `token_env` at call time; it never appears in config, logs or error messages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import dagster as dg
import httpx2
from huggingface_hub import hf_hub_url
from huggingface_hub.errors import (
    DisabledRepoError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status
from huggingface_hub.utils.sha import git_hash
from pydantic import PrivateAttr

from flock_pipeline import __version__
from flock_pipeline.core.commitment import (CommitmentError, validate_repo_id, validate_revision,
                                            validate_revision_prefix)
from flock_pipeline.resources.hub import DATA_FILE, HubError, HubFile, HubNotFound, HubResource

logger = logging.getLogger(__name__)

T = TypeVar("T")

_FILENAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$")  # one flat file name, never a path
_REPO_TYPES = ("dataset", "model", "space")
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of boolean environment variables
_MAX_BACKOFF_S = 30.0
_MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After gives up now (transient) rather than blocking a run
_MAX_SERVER_TEXT = 300
_CHUNK = 1 << 16
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def scrub(text: str, *secrets: str | None) -> str:
    """`text` with every secret and any bearer credential replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _BEARER.sub(r"\1***", text)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _TRUE


@dataclass(frozen=True)
class _RemoteFile:
    size: int
    sha256: str | None  # LFS object id: the sha256 of the content
    git_oid: str | None  # git blob id of the content (regular files only)


class _Retry(Exception):
    """An attempt failed in a way a later attempt may not (429, 5xx, a short body)."""

    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


class HuggingFaceHubResource(HubResource):
    """Dataset repos on the Hugging Face Hub (or any endpoint speaking its API).

    Downloads are cached by (repo type, repo id, revision, file name) under `cache_dir`; a revision is a full commit
    id, so a cached file never goes stale and is served without any request.
    """

    endpoint: str = "https://huggingface.co"
    token_env: str = "HF_TOKEN"  # the NAME of the environment variable holding the token; unset: anonymous
    cache_dir: str
    repo_type: str = "dataset"
    offline: bool | None = None  # None: follow HF_HUB_OFFLINE from the environment
    timeout_s: float = 30.0
    max_retries: int = 4
    backoff_s: float = 1.0

    _client: httpx2.Client | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # -- HubResource ------------------------------------------------------------------------------------------------

    def file_info(self, repo_id: str, revision: str, filename: str = DATA_FILE) -> HubFile:
        self._validate(repo_id, revision, filename)
        cached = self._cache_path(repo_id, revision, filename)
        if _cached_intact(cached, self.offline):
            return HubFile(repo_id, revision, filename, cached.stat().st_size)
        self._require_online(f"file info of {_where(repo_id, revision, filename)}", cacheable=True)
        return HubFile(repo_id, revision, filename, self._remote_file(repo_id, revision, filename).size)

    def download(self, repo_id: str, revision: str, filename: str = DATA_FILE, max_bytes: int | None = None) -> bytes:
        self._validate(repo_id, revision, filename)
        where = _where(repo_id, revision, filename)
        cached = self._cache_path(repo_id, revision, filename)
        if _cached_intact(cached, self.offline):
            _check_limit(filename, cached.stat().st_size, max_bytes)
            data = cached.read_bytes()
            digest = _digest_path(cached)
            if not digest.is_file():  # an entry cached before digests were kept, read offline: nothing to fetch
                logger.warning("the cached %s has no recorded sha256 (an older cache); served offline unverified",
                               where)
                return data
            if hashlib.sha256(data).hexdigest() == digest.read_text().strip():
                return data
            logger.warning("the cached %s does not match its recorded sha256: dropped, fetching it again", where)
            _drop_cached(cached)
        self._require_online(f"download of {where}", cacheable=True)
        remote = self._remote_file(repo_id, revision, filename)
        _check_limit(filename, remote.size, max_bytes)  # from metadata alone: nothing downloaded yet
        url = hf_hub_url(repo_id, filename, repo_type=self.repo_type, revision=revision, endpoint=self._endpoint)
        data = self._with_retries(f"download of {where}", lambda: self._fetch(url, remote, where))
        _verify_checksum(data, remote, where)
        _atomic_write(cached, data)
        _atomic_write(_digest_path(cached), hashlib.sha256(data).hexdigest().encode())  # checked on every read
        return data

    def head(self, repo_id: str) -> str:
        self._validate(repo_id)
        self._require_online(f"head of {repo_id}")
        what = f"head of {repo_id}"
        info = self._json("GET", self._api(repo_id), what, params={"expand": ["sha"]})
        sha = info.get("sha") if isinstance(info, dict) else None
        try:
            return validate_revision(sha)
        except CommitmentError:
            raise HubError(f"{what}: the hub answered no valid commit id") from None

    def resolve(self, repo_id: str, revision: str) -> str:
        try:
            validate_repo_id(repo_id)
            validate_revision_prefix(revision)
        except CommitmentError as exc:
            raise HubError(str(exc)) from None
        what = f"commit {revision} of {repo_id}"
        self._require_online(what)
        info = self._json("GET", f"{self._api(repo_id)}/revision/{revision}", what)
        sha = info.get("sha") if isinstance(info, dict) else None
        if not isinstance(sha, str) or not sha.startswith(revision):
            raise HubNotFound(f"{what}: not found")
        try:
            return validate_revision(sha)
        except CommitmentError:
            raise HubError(f"{what}: the hub answered no valid commit id") from None

    def upload(self, repo_id: str, data: bytes, filename: str = DATA_FILE, private: bool = True) -> str:
        """Create the repo if missing (private unless told otherwise) and commit `data` as `filename` on main.

        An existing repo is made private first when `private`: a new dataset stays hidden until it is committed on
        chain and published with `set_private(repo_id, False)`.
        """
        self._validate(repo_id, filename=filename)
        where = f"upload of {repo_id}/{filename}"
        self._require_online(where)
        token = self._require_token(where)
        if not self._create_repo(repo_id, private) and private:
            self.set_private(repo_id, True)
        mode, remote_oid = self._preupload(repo_id, filename, data)
        local_oid = hashlib.sha256(data).hexdigest() if mode == "lfs" else git_hash(data)
        if remote_oid == local_oid:  # unchanged on main: the head already holds these bytes
            return self.head(repo_id)
        if mode == "lfs":
            sha = self._commit_with_huggingface_hub(repo_id, filename, data, token)
        else:
            lines = [{"key": "header", "value": {"summary": f"Upload {filename}", "description": ""}},
                     {"key": "file", "value": {"content": base64.b64encode(data).decode("ascii"),
                                               "path": filename, "encoding": "base64"}}]
            body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
            answer = self._json("POST", f"{self._api(repo_id)}/commit/main", where, write=True, content=body,
                                headers={"Content-Type": "application/x-ndjson"})
            sha = answer.get("commitOid") if isinstance(answer, dict) else None
        try:
            return validate_revision(sha)
        except CommitmentError:
            raise HubError(f"{where}: the hub answered no valid commit id") from None

    def upload_files(self, repo_id: str, files: dict[str, bytes], private: bool = False, message: str = "") -> str:
        """Create the repo if missing and commit all `files` on main in one commit, through huggingface_hub's
        `HfApi.create_commit` (which uploads each file the way the hub asks: inline, LFS or Xet)."""
        from huggingface_hub import CommitOperationAdd

        self._validate(repo_id)
        for name in files:
            self._validate_path(name)
        where = f"upload of {len(files)} file(s) to {repo_id}"
        self._require_online(where)
        token = self._require_token(where)
        if not self._create_repo(repo_id, private) and private:
            self.set_private(repo_id, True)
        operations = [CommitOperationAdd(name, files[name]) for name in sorted(files)]
        sha = self._create_commit(repo_id, operations, message or f"Upload {len(files)} files", where, token)
        try:
            return validate_revision(sha)
        except CommitmentError:
            raise HubError(f"{where}: the hub answered no valid commit id") from None

    def set_private(self, repo_id: str, private: bool) -> None:
        self._validate(repo_id)
        where = f"visibility change of {repo_id}"
        self._require_online(where)
        self._require_token(where)
        self._json("PUT", f"{self._api(repo_id)}/settings", where, write=True,
                   json={"visibility": "private" if private else "public"})

    # -- lifecycle --------------------------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------------------------

    @property
    def _endpoint(self) -> str:
        return self.endpoint.rstrip("/")

    def _is_offline(self) -> bool:
        return self.offline if self.offline is not None else env_flag("HF_HUB_OFFLINE")

    def _token(self) -> str | None:
        return (os.environ.get(self.token_env) or "").strip() or None

    def _validate(self, repo_id: str, revision: str | None = None, filename: str | None = None) -> None:
        try:
            validate_repo_id(repo_id)
            if revision is not None:
                validate_revision(revision)
        except CommitmentError as exc:
            raise HubError(str(exc)) from None
        if filename is not None and (not isinstance(filename, str) or not _FILENAME.fullmatch(filename)
                                     or ".." in filename):
            raise HubError(f"invalid file name {filename!r}")
        if self.repo_type not in _REPO_TYPES:
            raise HubError(f"repo type {self.repo_type!r} is not one of {', '.join(_REPO_TYPES)}")

    def _validate_path(self, path: str) -> None:
        """A file's path in a repo: at most 8 names joined by "/", each a valid file name."""
        parts = path.split("/") if isinstance(path, str) else []
        if not parts or len(parts) > 8 or any(not _FILENAME.fullmatch(p) or ".." in p for p in parts):
            raise HubError(f"invalid file path {path!r}")

    def _require_online(self, what: str, cacheable: bool = False) -> None:
        if self._is_offline():
            raise HubError(f"{what}: offline mode{', and the file is not in the cache' if cacheable else ''}")

    def _require_token(self, what: str) -> str:
        token = self._token()
        if token is None:
            raise HubError(f"{what}: needs a Hugging Face token in the environment variable {self.token_env}")
        return token

    def _cache_path(self, repo_id: str, revision: str, filename: str) -> Path:
        namespace, name = repo_id.split("/")
        return Path(self.cache_dir) / f"{self.repo_type}s" / namespace / name / revision / filename

    def _api(self, repo_id: str) -> str:
        return f"{self._endpoint}/api/{self.repo_type}s/{repo_id}"

    def _http(self) -> httpx2.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx2.Client(timeout=httpx2.Timeout(self.timeout_s), follow_redirects=True)
            return self._client

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        # token=False when unset: huggingface_hub must never fall back to a token cached on disk
        return build_hf_headers(token=self._token() or False, library_name="flock-pipeline",
                                library_version=__version__, headers=extra)

    def _with_retries(self, what: str, attempt: Callable[[], T]) -> T:
        """Run `attempt`, retrying 429 / 5xx / connection errors / short bodies with exponential backoff."""
        reason, attempts = "no attempt", max(0, self.max_retries) + 1
        for n in range(attempts):
            try:
                return attempt()
            except _Retry as retry:
                reason, wait_s = retry.reason, retry.wait_s
            except httpx2.TransportError as exc:  # refused, reset, timed out, body cut short
                reason, wait_s = f"{type(exc).__name__}: {exc}", None
            reason = scrub(reason, self._token())
            if n == attempts - 1:
                break
            delay = wait_s if wait_s is not None else min(self.backoff_s * 2 ** n, _MAX_BACKOFF_S)
            logger.warning("%s: %s; retry %d/%d in %.2fs", what, reason, n + 1, attempts - 1, delay)
            time.sleep(delay)
        raise HubError(f"{what}: {reason} (gave up after {attempts} attempts)", transient=True)

    def _check(self, response: httpx2.Response, what: str, write: bool = False) -> None:
        """Return on 2xx; raise `_Retry` for what a retry may fix, else HubNotFound / HubError."""
        status = response.status_code
        if status < 300:
            return
        if status in (408, 429) or status >= 500:
            wait_s = _retry_after(response.headers.get("Retry-After"))
            if wait_s is not None and wait_s > _MAX_RETRY_AFTER_S:
                raise HubError(f"{what}: HTTP {status}, the hub asks to retry after {wait_s:.0f}s", transient=True)
            raise _Retry(f"HTTP {status}", wait_s)
        try:
            hf_raise_for_status(response)
        except HfHubHTTPError as exc:
            self._raise_mapped(exc, what, write)
        raise HubError(f"{what}: unexpected HTTP {status}")

    def _raise_mapped(self, exc: HfHubHTTPError, what: str, write: bool) -> NoReturn:
        token = self._token()
        headers = exc.response.headers if exc.response is not None else {}
        status = exc.response.status_code if exc.response is not None else 0
        detail = scrub(" ".join((exc.server_message or "").split())[:_MAX_SERVER_TEXT], token)
        suffix = f" (HTTP {status}{': ' + detail if detail else ''})"
        if isinstance(exc, GatedRepoError):
            raise HubNotFound(f"{what}: gated repository, access not granted{suffix}") from None
        if isinstance(exc, RepositoryNotFoundError):
            raise HubNotFound(f"{what}: repository not found or private{suffix}") from None
        if isinstance(exc, RevisionNotFoundError):
            raise HubNotFound(f"{what}: revision not found{suffix}") from None
        if isinstance(exc, RemoteEntryNotFoundError):
            raise HubNotFound(f"{what}: file not found{suffix}") from None
        if isinstance(exc, DisabledRepoError):
            raise HubNotFound(f"{what}: repository disabled{suffix}") from None
        if status == 401 and headers.get("X-Error-Message") == _INVALID_CREDENTIALS:
            raise HubError(f"{what}: the hub rejected the token in {self.token_env}{suffix}") from None
        if not write and status in (401, 403, 404, 410):
            raise HubNotFound(f"{what}: not found or not accessible{suffix}") from None
        raise HubError(f"{what}: refused{suffix}") from None

    def _json(self, method: str, url: str, what: str, write: bool = False, headers: dict[str, str] | None = None,
              **kwargs: Any) -> Any:
        def attempt() -> Any:
            logger.debug("%s %s", method, url)
            response = self._http().request(method, url, headers=self._headers(headers), **kwargs)
            self._check(response, what, write)
            try:
                return response.json() if response.content else {}
            except ValueError:
                raise HubError(f"{what}: the hub answered something that is not JSON") from None

        return self._with_retries(what, attempt)

    def _remote_file(self, repo_id: str, revision: str, filename: str) -> _RemoteFile:
        """Size and checksum of one file at a revision, from the hub's metadata (paths-info)."""
        where = _where(repo_id, revision, filename)
        what = f"file info of {where}"
        entries = self._json("POST", f"{self._api(repo_id)}/paths-info/{quote(revision, safe='')}", what,
                             data={"paths": [filename], "expand": False})
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("type") == "file" and entry.get("path") == filename:
                try:
                    info = RepoFile(**entry)
                except (KeyError, TypeError, ValueError):
                    raise HubError(f"{what}: malformed file metadata") from None
                size = info.lfs.size if info.lfs is not None else info.size
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise HubError(f"{what}: malformed file size {size!r}")
                if info.lfs is not None:
                    return _RemoteFile(size, str(info.lfs.sha256).lower(), None)
                # a Xet-only file's oid is its pointer's, not the content's: no checksum to compare then
                return _RemoteFile(size, None, None if info.xet_hash else str(info.blob_id).lower())
        raise HubNotFound(f"{what}: file not found")

    def _fetch(self, url: str, remote: _RemoteFile, where: str) -> bytes:
        """One streamed GET, reading at most the metadata size (plus one chunk) whatever the server sends."""
        logger.debug("GET %s", url)
        with self._http().stream("GET", url, headers=self._headers({"Accept-Encoding": "identity"})) as response:
            self._check(response, f"download of {where}")
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > remote.size:
                raise HubError(f"download of {where}: the server sends {declared} bytes, "
                               f"the hub's metadata says {remote.size}")
            data = bytearray()
            for chunk in response.iter_bytes(_CHUNK):
                data += chunk
                if len(data) > remote.size:
                    raise HubError(f"download of {where}: more than the {remote.size} bytes the hub's metadata says")
        if len(data) < remote.size:
            raise _Retry(f"truncated body: {len(data)} of {remote.size} bytes")
        return bytes(data)

    def _create_repo(self, repo_id: str, private: bool) -> bool:
        """True when the repo was created now, False when it already existed."""
        namespace, name = repo_id.split("/")
        what = f"creation of {repo_id}"
        payload = {"name": name, "organization": namespace, "visibility": "private" if private else "public",
                   "type": self.repo_type}
        url = f"{self._endpoint}/api/repos/create"

        def attempt() -> bool:
            logger.debug("POST %s", url)
            response = self._http().post(url, headers=self._headers(), json=payload)
            if response.status_code == 409:
                return False
            if response.status_code in (401, 402, 403):  # a token without create rights may still write here
                try:
                    self.head(repo_id)
                    return False
                except HubError:
                    pass
            self._check(response, what, write=True)
            return True

        return self._with_retries(what, attempt)

    def _preupload(self, repo_id: str, filename: str, data: bytes) -> tuple[str, str | None]:
        """The hub's upload mode for the file ("regular" or "lfs") and the id of the file now on main, if any."""
        what = f"upload of {repo_id}/{filename}"
        payload = {"files": [{"path": filename, "sample": base64.b64encode(data[:512]).decode("ascii"),
                              "size": len(data)}]}
        answer = self._json("POST", f"{self._api(repo_id)}/preupload/main", what, write=True, json=payload)
        files = answer.get("files") if isinstance(answer, dict) else None
        entry = next((f for f in files or [] if isinstance(f, dict) and f.get("path") == filename), None)
        if entry is None or entry.get("uploadMode") not in ("regular", "lfs"):
            raise HubError(f"{what}: malformed preupload answer")
        if entry.get("shouldIgnore"):
            raise HubError(f"{what}: the repo's .gitignore excludes {filename}")
        mode = "regular" if not data else entry["uploadMode"]
        oid = entry.get("oid")
        return mode, oid.lower() if isinstance(oid, str) else None

    def _commit_with_huggingface_hub(self, repo_id: str, filename: str, data: bytes, token: str) -> str:
        """Commit a file the hub stores as an LFS/Xet object: huggingface_hub implements those transfers."""
        from huggingface_hub import CommitOperationAdd

        return self._create_commit(repo_id, [CommitOperationAdd(filename, data)], f"Upload {filename}",
                                   f"upload of {repo_id}/{filename}", token)

    def _create_commit(self, repo_id: str, operations: list, message: str, what: str, token: str) -> str:
        """One commit on main through `HfApi.create_commit`; its errors mapped to HubError."""
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self._endpoint, token=token, library_name="flock-pipeline", library_version=__version__)
        try:
            info = api.create_commit(repo_id, operations, commit_message=message, repo_type=self.repo_type)
        except OfflineModeIsEnabled:
            raise HubError(f"{what}: this commit goes through huggingface_hub (LFS/Xet transfers, multi-file "
                           "commits), which HF_HUB_OFFLINE=1 disables; unset it to upload") from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status == 429 or status >= 500:  # the hub's own trouble: a later try may succeed
                raise HubError(f"{what}: HTTP {status}", transient=True) from None
            self._raise_mapped(exc, what, write=True)
        except httpx2.TransportError as exc:
            raise HubError(f"{what}: {type(exc).__name__}: {scrub(str(exc), token)}", transient=True) from None
        except Exception as exc:  # noqa: BLE001 - the LFS/Xet transfer machinery of a library: its reason only
            raise HubError(f"{what}: {type(exc).__name__}: {scrub(str(exc), token)[:_MAX_SERVER_TEXT]}") from None
        return info.oid


def _where(repo_id: str, revision: str, filename: str) -> str:
    return f"{repo_id}@{revision}/{filename}"


def _check_limit(filename: str, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise HubError(f"{filename} is {size} bytes, limit {max_bytes}")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header in its delay-seconds form (HTTP dates are ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _verify_checksum(data: bytes, remote: _RemoteFile, where: str) -> None:
    if remote.sha256 is not None and hashlib.sha256(data).hexdigest() != remote.sha256:
        raise HubError(f"download of {where}: content does not match the hub's sha256")
    if remote.git_oid is not None and git_hash(data) != remote.git_oid:
        raise HubError(f"download of {where}: content does not match the hub's git object id")


def _digest_path(cached: Path) -> Path:
    return cached.with_name(cached.name + ".sha256")


def _cached_intact(cached: Path, offline: bool = False) -> bool:
    """A cached file is used only with its recorded sha256 beside it (written after the file, so a crash between the
    two leaves a file that is fetched again); a file without one is dropped, except offline, where it cannot be
    fetched again (an entry from before digests were kept)."""
    if not cached.is_file():
        return False
    if _digest_path(cached).is_file() or offline:
        return True
    _drop_cached(cached)
    return False


def _drop_cached(cached: Path) -> None:
    cached.unlink(missing_ok=True)
    _digest_path(cached).unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

