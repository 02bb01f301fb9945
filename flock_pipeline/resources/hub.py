"""The dataset hub: repos with immutable revisions holding a miner's `data.jsonl`.

`HubResource` is the interface; `LocalHubResource` is the embedded hub: a directory of repos whose revisions are
content-addressed (a revision id is the sha1 of its parent, file name and bytes, 40 hex like a git commit id).
The Hugging Face implementation fills the same interface.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from flock_pipeline.core.commitment import validate_repo_id, validate_revision

DATA_FILE = "data.jsonl"


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    revision: str
    filename: str
    size: int  # bytes, as the hub reports it before any download


class HubError(RuntimeError):
    """The hub could not serve a request; `transient` says whether a retry may succeed."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class HubNotFound(HubError):
    """The repo, revision or file does not exist (or is private to us)."""


class HubResource(dg.ConfigurableResource):
    """Interface to a dataset hub. Subclasses implement every method."""

    def file_info(self, repo_id: str, revision: str, filename: str = DATA_FILE) -> HubFile:
        raise NotImplementedError

    def download(self, repo_id: str, revision: str, filename: str = DATA_FILE, max_bytes: int | None = None) -> bytes:
        """The file's bytes at a full revision; refuses before downloading when the hub says it is too big."""
        raise NotImplementedError

    def upload(self, repo_id: str, data: bytes, filename: str = DATA_FILE, private: bool = True) -> str:
        """Create the repo if needed, commit `data` as `filename`; returns the new revision (40 hex)."""
        raise NotImplementedError

    def set_private(self, repo_id: str, private: bool) -> None:
        raise NotImplementedError

    def head(self, repo_id: str) -> str:
        """The repo's latest revision."""
        raise NotImplementedError


class LocalHubResource(HubResource):
    """Embedded hub in a directory: `<root>/<namespace>/<name>/{repo.json, revisions/<rev>/<file>}`.

    `as_owner` makes private repos readable (the miner's own view); validators read with as_owner=False.
    """

    root: str
    as_owner: bool = False

    def _repo_dir(self, repo_id: str) -> Path:
        validate_repo_id(repo_id)
        return Path(self.root) / repo_id

    def _meta(self, repo_id: str) -> dict:
        meta = self._repo_dir(repo_id) / "repo.json"
        if not meta.exists():
            raise HubNotFound(f"repo {repo_id} not found")
        info = json.loads(meta.read_text())
        if info["private"] and not self.as_owner:
            raise HubNotFound(f"repo {repo_id} not found")  # private repos look absent, as on Hugging Face
        return info

    def _file(self, repo_id: str, revision: str, filename: str) -> Path:
        validate_revision(revision)
        if "/" in filename or filename.startswith("."):
            raise HubError(f"invalid file name {filename!r}")
        self._meta(repo_id)
        path = self._repo_dir(repo_id) / "revisions" / revision / filename
        if not path.exists():
            raise HubNotFound(f"{filename} not found in {repo_id} at {revision}")
        return path

    def file_info(self, repo_id: str, revision: str, filename: str = DATA_FILE) -> HubFile:
        return HubFile(repo_id, revision, filename, self._file(repo_id, revision, filename).stat().st_size)

    def download(self, repo_id: str, revision: str, filename: str = DATA_FILE, max_bytes: int | None = None) -> bytes:
        info = self.file_info(repo_id, revision, filename)
        if max_bytes is not None and info.size > max_bytes:
            raise HubError(f"{filename} is {info.size} bytes, limit {max_bytes}")
        return self._file(repo_id, revision, filename).read_bytes()

    def head(self, repo_id: str) -> str:
        head = self._meta(repo_id).get("head")
        if not head:
            raise HubNotFound(f"repo {repo_id} has no revision")
        return head

    def upload(self, repo_id: str, data: bytes, filename: str = DATA_FILE, private: bool = True) -> str:
        repo = self._repo_dir(repo_id)
        meta_path = repo / "repo.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"private": private, "head": None}
        parent = meta["head"] or ""
        revision = hashlib.sha1(b"\0".join([parent.encode(), filename.encode(), data])).hexdigest()
        target = repo / "revisions" / revision
        if not (target / filename).exists():
            target.mkdir(parents=True, exist_ok=True)
            _atomic_write(target / filename, data)
        meta["head"] = revision
        _atomic_write(meta_path, json.dumps(meta).encode())
        return revision

    def set_private(self, repo_id: str, private: bool) -> None:
        meta_path = self._repo_dir(repo_id) / "repo.json"
        if not meta_path.exists():
            raise HubNotFound(f"repo {repo_id} not found")
        meta = json.loads(meta_path.read_text())
        meta["private"] = private
        _atomic_write(meta_path, json.dumps(meta).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
