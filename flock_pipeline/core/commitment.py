"""The on-chain commitment of a miner's dataset: ``"{namespace}/{repo}:{competition_id}:{revision}"``.

The live subnet stores it as a raw commitment of at most 128 bytes; the revision is the dataset repo's 40-hex commit
id. Everything read from the chain is untrusted, so decoding validates each part and says why it refuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flock_pipeline.errors import UsageError

MAX_COMMITMENT_BYTES = 128  # the chain's raw commitment field limit on the live subnet
DEFAULT_COMPETITION_ID = "1"

# Hugging Face repo ids: namespace/name, each 1-96 chars of [A-Za-z0-9._-], not starting with '.' or '-',
# and never '..' (path tricks) -- checked before the id is ever used in a URL or a path.
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION = re.compile(r"^[0-9a-f]{40}$")
_REVISION_PREFIX = re.compile(r"^[0-9a-f]{7,40}$")
_COMPETITION = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class CommitmentError(UsageError, ValueError):
    """A commitment string (or one of its parts) is not acceptable; the message says why."""


def validate_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str):
        raise CommitmentError("repo id must be a string")
    parts = repo_id.split("/")
    if len(parts) != 2:
        raise CommitmentError(f"repo id {repo_id!r} must be 'namespace/name'")
    for part in parts:
        if not _REPO_PART.fullmatch(part) or ".." in part or part.endswith(".git"):
            raise CommitmentError(f"repo id {repo_id!r} has an invalid part {part!r}")
    return repo_id


def validate_revision(revision: str) -> str:
    """Only full 40-hex commit ids: branch names and short ids can move or collide."""
    if not isinstance(revision, str) or not _REVISION.fullmatch(revision):
        raise CommitmentError(f"revision {revision!r} is not a full 40-hex commit id")
    return revision


def validate_revision_prefix(revision: str) -> str:
    """A full commit id or a 7-39 hex prefix of one (what the live selection validators accept: they compare that
    many characters of the dataset's commit)."""
    if not isinstance(revision, str) or not _REVISION_PREFIX.fullmatch(revision):
        raise CommitmentError(f"revision {revision!r} is not a commit id (7 to 40 lowercase hex characters)")
    return revision


@dataclass(frozen=True)
class Commitment:
    """A decoded commitment. `short` admits a 7-39 hex prefix as the revision (resolved against the hub before any
    use, by the games that accept one); otherwise the revision is a full commit id."""

    repo_id: str
    competition_id: str
    revision: str
    short: bool = False

    @property
    def full_revision(self) -> bool:
        return bool(_REVISION.fullmatch(self.revision))

    def __post_init__(self) -> None:
        validate_repo_id(self.repo_id)
        (validate_revision_prefix if self.short else validate_revision)(self.revision)
        if not _COMPETITION.fullmatch(self.competition_id):
            raise CommitmentError(f"competition id {self.competition_id!r} is invalid")
        if len(self.to_compressed_str().encode("utf-8")) > MAX_COMMITMENT_BYTES:
            raise CommitmentError(f"commitment is longer than {MAX_COMMITMENT_BYTES} bytes")

    def to_compressed_str(self) -> str:
        return f"{self.repo_id}:{self.competition_id}:{self.revision}"

    @classmethod
    def from_compressed_str(cls, data: str | bytes, short: bool = False) -> Commitment:
        if isinstance(data, bytes):
            if len(data) > MAX_COMMITMENT_BYTES:
                raise CommitmentError(f"commitment is {len(data)} bytes, limit {MAX_COMMITMENT_BYTES}")
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                raise CommitmentError("commitment is not UTF-8") from None
        if not isinstance(data, str):
            raise CommitmentError("commitment must be text")
        try:
            size = len(data.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates: not text any chain would hold
            raise CommitmentError("commitment is not valid Unicode text") from None
        if size > MAX_COMMITMENT_BYTES:
            raise CommitmentError(f"commitment is longer than {MAX_COMMITMENT_BYTES} bytes")
        parts = data.strip().split(":")
        if len(parts) != 3:
            raise CommitmentError(f"commitment {data[:64]!r} must be 'namespace/repo:competition:revision'")
        return cls(repo_id=parts[0], competition_id=parts[1], revision=parts[2], short=short)
