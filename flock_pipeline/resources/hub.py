"""The dataset hub: repos with immutable revisions holding a miner's `data.jsonl`.

`HubResource` is the interface; `LocalHubResource` is the embedded hub: a directory of repos whose revisions are
content-addressed (a revision id is the sha1 of its parent, file name and bytes, 40 hex like a git commit id).
The Hugging Face implementation fills the same interface.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from flock_pipeline.core.commitment import validate_repo_id, validate_revision, validate_revision_prefix
from flock_pipeline.errors import FlockError

DATA_FILE = "data.jsonl"


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    revision: str
    filename: str
    size: int  # bytes, as the hub reports it before any download


class HubError(FlockError, RuntimeError):
    """The hub could not serve a request; `transient` says whether a retry may succeed."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message, hint="try again in a while" if transient else None)
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

    def upload_files(self, repo_id: str, files: dict[str, bytes], private: bool = False, message: str = "") -> str:
        """Create the repo if needed and commit all `files` (path in the repo -> bytes; a path may have folders,
        e.g. "jsonl/sft.jsonl") as one revision; returns it (40 hex)."""
        raise NotImplementedError

    def set_private(self, repo_id: str, private: bool) -> None:
        raise NotImplementedError

    def head(self, repo_id: str) -> str:
        """The repo's latest revision."""
        raise NotImplementedError

    def resolve(self, repo_id: str, revision: str) -> str:
        """The full commit id that `revision` (a full id, or a 7-39 hex prefix of one) names; HubNotFound when the
        repo has no such commit."""
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
        """The repo's record; a garbled one means the repo cannot be served (HubError), never a crash."""
        meta = self._repo_dir(repo_id) / "repo.json"
        if not os.path.lexists(meta):
            raise HubNotFound(f"repo {repo_id} not found")
        try:
            info = json.loads(_read_regular(meta, self.root, MAX_RECORD_BYTES).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise HubError(f"repo {repo_id}: its record is garbled ({exc})") from exc
        if not isinstance(info, dict) or not isinstance(info.get("private"), bool) \
                or not isinstance(info.get("head"), (str, type(None))):
            raise HubError(f"repo {repo_id}: its record is garbled (not a repo record)")
        if info["private"] and not self.as_owner:
            raise HubNotFound(f"repo {repo_id} not found")  # private repos look absent, as on Hugging Face
        return info

    def _file(self, repo_id: str, revision: str, filename: str) -> Path:
        validate_revision(revision)
        _check_path(filename)
        self._meta(repo_id)
        path = self._repo_dir(repo_id) / "revisions" / revision / filename
        if not os.path.lexists(path):
            raise HubNotFound(f"{filename} not found in {repo_id} at {revision}")
        return path

    def file_info(self, repo_id: str, revision: str, filename: str = DATA_FILE) -> HubFile:
        path = self._file(repo_id, revision, filename)
        return HubFile(repo_id, revision, filename, _regular_stat(path, self.root).st_size)

    def download(self, repo_id: str, revision: str, filename: str = DATA_FILE, max_bytes: int | None = None) -> bytes:
        info = self.file_info(repo_id, revision, filename)
        if max_bytes is not None and info.size > max_bytes:
            raise HubError(f"{filename} is {info.size} bytes, limit {max_bytes}")
        return _read_regular(self._file(repo_id, revision, filename), self.root, max_bytes)

    def head(self, repo_id: str) -> str:
        head = self._meta(repo_id).get("head")
        if not head:
            raise HubNotFound(f"repo {repo_id} has no revision")
        return head

    def resolve(self, repo_id: str, revision: str) -> str:
        validate_revision_prefix(revision)
        self._meta(repo_id)
        revisions = self._repo_dir(repo_id) / "revisions"
        found = sorted(p.name for p in revisions.iterdir() if p.name.startswith(revision)) \
            if revisions.is_dir() else []
        if len(found) != 1:
            raise HubNotFound(f"repo {repo_id} has {'no' if not found else 'more than one'} commit {revision}")
        return found[0]

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

    def upload_files(self, repo_id: str, files: dict[str, bytes], private: bool = False, message: str = "") -> str:
        """One revision holding exactly `files` (its id: the sha1 of the parent and each path and content)."""
        for name in files:
            _check_path(name)
        repo = self._repo_dir(repo_id)
        meta_path = repo / "repo.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"private": private, "head": None}
        digest = hashlib.sha1((meta["head"] or "").encode())
        for name in sorted(files):
            digest.update(b"\0" + name.encode() + b"\0" + hashlib.sha1(files[name]).digest())
        revision = digest.hexdigest()
        target = repo / "revisions" / revision
        if not target.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=f".{revision}-", dir=target.parent))
            for name, data in files.items():
                (stage / name).parent.mkdir(parents=True, exist_ok=True)
                (stage / name).write_bytes(data)
            try:
                os.rename(stage, target)
            except OSError:  # the same revision, written by another upload meanwhile
                shutil.rmtree(stage, ignore_errors=True)
                if not target.is_dir():
                    raise
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


MAX_RECORD_BYTES = 64 * 2**10  # a repo record is a few dozen bytes


def _check_path(filename: str) -> None:
    """A file's path in a repo: names joined by "/", none empty or starting with "." (no "..", no hidden files)."""
    if not isinstance(filename, str) or not filename or any(
            not part or part.startswith(".") for part in filename.split("/")):
        raise HubError(f"invalid file name {filename!r}")


def _inside(path: Path, root: str) -> None:
    """Every component of `path` below `root` is a real entry, not a symlink (a link could point anywhere, e.g. out
    of the hub or at /dev/urandom)."""
    base = Path(root)
    current = base
    for part in path.relative_to(base).parts:
        current = current / part
        if current.is_symlink():
            raise HubError(f"{path.relative_to(base)}: {current.name} is a symbolic link, not part of the hub")


def _regular_stat(path: Path, root: str) -> os.stat_result:
    _inside(path, root)
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise HubError(f"{path.relative_to(Path(root))}: not a regular file")
    return info


def _read_regular(path: Path, root: str, max_bytes: int | None) -> bytes:
    """Read a regular file of the hub, at most `max_bytes` (+1 to tell that it is over): a FIFO, a device, a
    directory or a symlink is refused without blocking (opened non-blocking, without following links)."""
    _inside(path, root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise HubError(f"{path.relative_to(Path(root))}: cannot be opened ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise HubError(f"{path.relative_to(Path(root))}: not a regular file")
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise HubError(f"{path.name} is over {max_bytes} bytes")
    return data


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
