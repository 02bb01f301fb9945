"""A loopback fake of the Hugging Face Hub, speaking the endpoints huggingface_hub 2.4.0 calls for dataset repos.

    with FakeHubServer(tokens={"hf_owner": "alice"}) as server:
        server.add_repo("alice/data", private=True)
        sha = server.commit("alice/data", {"data.jsonl": b"..."})
        HuggingFaceHubResource(endpoint=server.url, offline=False, ...)

Endpoints (`{t}` is models / datasets / spaces; `{rev}` a branch ("main") or a 40-hex commit id, URL-quoted):

    GET  /api/{t}/{ns}/{name}[/revision/{rev}]     repo info (sha, private, siblings)
    POST /api/{t}/{ns}/{name}/paths-info/{rev}     form `paths=...&expand=...` -> file entries (size, oid, lfs)
    HEAD|GET /[datasets/|spaces/]{ns}/{name}/resolve/{rev}/{file}   file bytes, X-Repo-Commit, ETag, X-Linked-*
    POST /api/repos/create                         JSON {name, organization, visibility|private, type}
    POST /api/{t}/{ns}/{name}/preupload/{rev}      JSON {files: [{path, sample, size}]} -> upload modes
    POST /api/{t}/{ns}/{name}/commit/{rev}         NDJSON: header, file (base64) / deletedFile lines
    POST /api/validate-yaml                        JSON {content, repoType}: a README's metadata, checked
    PUT  /api/{t}/{ns}/{name}/settings             JSON {visibility | private}

Repos are private to their namespace's user: without that user's bearer token a private repo answers 404
(401 when anonymous) with `X-Error-Code: RepoNotFound`, like the real hub. Files above `regular_max_bytes` are
answered "lfs" by preupload; this fake stores no LFS objects, so such commits are refused.

Fault injection: `fail(path_substring, codes)` answers those status codes first (`forever=True` repeats the last);
`truncate(path_substring)` sends a file's full Content-Length but half its bytes, then closes. `requests` logs
every request (method, path, query, headers, body), faults included.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, UTC
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

_API = re.compile(r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$")
_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
_STREAM_CHUNK = 1 << 20
_GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # URL-decoded, without the query string
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class StoredFile:
    size: int
    data: bytes | None  # None: a declared file, listed with its size but holding no bytes
    lfs: bool
    sha256: str
    oid: str  # git blob id: of the content (regular) or of the LFS pointer (lfs)


@dataclass
class FakeRepo:
    repo_type: str
    repo_id: str
    private: bool
    gated: bool = False
    commits: dict[str, dict[str, StoredFile]] = field(default_factory=dict)
    head: str = ""


@dataclass
class _Fault:
    substring: str
    codes: deque[int]
    forever: bool
    method: str | None
    headers: dict[str, str]
    message: str | None


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = {"error": message, **(body or {})}


class FakeHubServer:
    """In-memory hub on 127.0.0.1 with an ephemeral port; `tokens` maps bearer tokens to user names."""

    def __init__(self, tokens: dict[str, str] | None = None, regular_max_bytes: int = 10 * 2**20):
        self.tokens: dict[str, str] = dict(tokens or {})
        self.regular_max_bytes = regular_max_bytes
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._truncations: list[list] = []  # [substring, remaining or None]
        self._lock = threading.RLock()
        self._counter = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------------

    def start(self) -> FakeHubServer:
        if self._httpd is None:
            handler = type("Handler", (_Handler,), {"hub": self})
            self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            self._httpd.daemon_threads = True
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                            name="fake-hf-hub", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> FakeHubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- state ------------------------------------------------------------------------------------------------------

    def add_token(self, token: str, user: str) -> None:
        with self._lock:
            self.tokens[token] = user

    def add_repo(self, repo_id: str, private: bool = False, repo_type: str = "dataset", gated: bool = False) -> str:
        """Create a repo with its initial commit (a .gitattributes, as the hub does); returns that commit id."""
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                raise ValueError(f"{repo_type} repo {repo_id} exists")
            self.repos[(repo_type, repo_id)] = FakeRepo(repo_type, repo_id, private, gated)
            return self._new_commit(self.repos[(repo_type, repo_id)], {".gitattributes": _regular(_GITATTRIBUTES)},
                                    ())

    def commit(self, repo_id: str, files: dict[str, bytes], repo_type: str = "dataset", lfs: bool = False,
               delete: tuple[str, ...] = ()) -> str:
        """Commit files on main (stored as LFS objects when `lfs`); returns the new commit id."""
        with self._lock:
            stored = {name: (_lfs(data) if lfs else _regular(data)) for name, data in files.items()}
            return self._new_commit(self._repo(repo_type, repo_id), stored, delete)

    def add_declared_file(self, repo_id: str, filename: str, size: int, repo_type: str = "dataset") -> str:
        """Commit an LFS file that is listed with `size` bytes but stores none (e.g. 10 GB); returns the commit id."""
        with self._lock:
            digest = hashlib.sha256(f"{repo_id}/{filename}/{size}".encode()).hexdigest()
            pointer = _lfs_pointer(digest, size)
            stored = StoredFile(size, None, True, digest, git_blob_id(pointer))
            return self._new_commit(self._repo(repo_type, repo_id), {filename: stored}, ())

    def set_private(self, repo_id: str, private: bool, repo_type: str = "dataset") -> None:
        with self._lock:
            self._repo(repo_type, repo_id).private = private

    def repo(self, repo_id: str, repo_type: str = "dataset") -> FakeRepo:
        with self._lock:
            return self._repo(repo_type, repo_id)

    def file_bytes(self, repo_id: str, revision: str, filename: str, repo_type: str = "dataset") -> bytes | None:
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            stored = repo.commits[repo.head if revision == "main" else revision].get(filename)
            return stored.data if stored is not None else None

    # -- faults and the request log ---------------------------------------------------------------------------------

    def fail(self, path_substring: str, codes: list[int], *, forever: bool = False, method: str | None = None,
             headers: dict[str, str] | None = None, message: str | None = None) -> None:
        """Answer the next requests whose path contains `path_substring` with `codes`, in order, each with the
        extra `headers` and the JSON body {"error": message}."""
        if not codes:
            raise ValueError("codes must not be empty")
        with self._lock:
            self._faults.append(_Fault(path_substring, deque(codes), forever, method and method.upper(),
                                       dict(headers or {}), message))

    def truncate(self, path_substring: str, *, times: int | None = 1) -> None:
        """Cut the body of the next `times` file downloads matching `path_substring` (None: all of them)."""
        with self._lock:
            self._truncations.append([path_substring, times])

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._truncations.clear()

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def requests_to(self, path_substring: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests
                    if path_substring in r.path and (method is None or r.method == method.upper())]

    # -- internals (called by the handler under the lock) -----------------------------------------------------------

    def _repo(self, repo_type: str, repo_id: str) -> FakeRepo:
        try:
            return self.repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(f"no {repo_type} repo {repo_id}") from None

    def _new_commit(self, repo: FakeRepo, files: dict[str, StoredFile], delete: tuple[str, ...]) -> str:
        tree = dict(repo.commits.get(repo.head, {}))
        for name in delete:
            tree.pop(name, None)
        tree.update(files)
        self._counter += 1
        listing = "\n".join(f"{name} {f.oid}" for name, f in sorted(tree.items()))
        sha = hashlib.sha1(f"{repo.repo_id}\n{repo.head}\n{self._counter}\n{listing}".encode()).hexdigest()
        repo.commits[sha] = tree
        repo.head = sha
        return sha

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.substring in path and (fault.method is None or fault.method == method) and fault.codes:
                return fault
        return None

    def _take_truncation(self, path: str) -> bool:
        for item in self._truncations:
            substring, remaining = item
            if substring in path and (remaining is None or remaining > 0):
                if remaining is not None:
                    item[1] = remaining - 1
                return True
        return False


def _regular(data: bytes) -> StoredFile:
    return StoredFile(len(data), data, False, hashlib.sha256(data).hexdigest(), git_blob_id(data))


def _lfs(data: bytes) -> StoredFile:
    digest = hashlib.sha256(data).hexdigest()
    return StoredFile(len(data), data, True, digest, git_blob_id(_lfs_pointer(digest, len(data))))


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small header + body writes would otherwise wait on delayed ACKs (~40 ms)
    hub: FakeHubServer  # set on the per-server subclass

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests read `hub.requests`
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    # -- dispatch ---------------------------------------------------------------------------------------------------

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parts.query
        body = self._read_body()
        hub = self.hub
        with hub._lock:
            hub.requests.append(RecordedRequest(method, path, query, {k.lower(): v for k, v in self.headers.items()},
                                                body))
            fault = hub._take_fault(method, path)
            if fault is not None:
                code = fault.codes[0] if fault.forever and len(fault.codes) == 1 else fault.codes.popleft()
                message = fault.message if fault.message is not None else f"injected HTTP {code}"
                self._send_json(code, {"error": message}, fault.headers, head=method == "HEAD")
                return
        try:
            self._route(method, parts.path, query, body)
        except _HubError as err:
            headers = dict(err.headers)
            if err.code:
                headers["X-Error-Code"] = err.code
            headers["X-Error-Message"] = err.message
            self._send_json(err.status, err.body, headers, head=method == "HEAD")
        except Exception as exc:  # a bug in this fake: say so instead of dropping the connection
            self._send_json(500, {"error": f"fake hub failure: {exc!r}"}, head=method == "HEAD")

    def _route(self, method: str, raw_path: str, query: str, body: bytes) -> None:
        if raw_path == "/api/repos/create" and method == "POST":
            return self._create_repo(_json_body(body))
        if raw_path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml(_json_body(body))
        api = _API.match(raw_path)
        if api is not None:
            repo_type, repo_id = _PLURAL[api.group(1)], f"{unquote(api.group(2))}/{unquote(api.group(3))}"
            rest = [unquote(p) for p in (api.group(4) or "").split("/") if p]
            return self._api(method, repo_type, repo_id, rest, query, body)
        resolve = _RESOLVE.match(raw_path)
        if resolve is not None and method in ("GET", "HEAD"):
            repo_type = _PLURAL.get(resolve.group(1) or "models", "model")
            repo_id = f"{unquote(resolve.group(2))}/{unquote(resolve.group(3))}"
            return self._resolve(method, repo_type, repo_id, unquote(resolve.group(4)), unquote(resolve.group(5)))
        raise _HubError(404, f"no route for {method} {raw_path}")

    def _api(self, method: str, repo_type: str, repo_id: str, rest: list[str], query: str, body: bytes) -> None:
        if method == "GET" and not rest:
            return self._repo_info(repo_type, repo_id, "main")
        if method == "GET" and len(rest) == 2 and rest[0] == "revision":
            return self._repo_info(repo_type, repo_id, rest[1])
        if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
            return self._paths_info(repo_type, repo_id, rest[1], body)
        if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
            return self._preupload(repo_type, repo_id, rest[1], _json_body(body))
        if method == "POST" and len(rest) == 2 and rest[0] == "commit":
            return self._commit(repo_type, repo_id, rest[1], body)
        if method == "PUT" and rest == ["settings"]:
            return self._settings(repo_type, repo_id, _json_body(body))
        raise _HubError(404, f"no route for {method} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}")

    # -- auth -------------------------------------------------------------------------------------------------------

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization")
        if auth is None:
            return None
        scheme, _, token = auth.partition(" ")
        user = self.hub.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise _HubError(401, "Invalid credentials in Authorization header")
        return user

    def _readable(self, repo_type: str, repo_id: str) -> FakeRepo:
        user = self._user()
        repo = self.hub.repos.get((repo_type, repo_id))
        owner = repo is not None and user == repo_id.split("/")[0]
        if repo is None or (repo.private and not owner):
            raise _HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        if repo.gated and not owner:
            raise _HubError(403, "Access to this repo is restricted: you need to accept its conditions", "GatedRepo")
        return repo

    def _writable(self, repo_type: str, repo_id: str) -> FakeRepo:
        repo = self._readable(repo_type, repo_id)
        if self._user() != repo_id.split("/")[0]:
            raise _HubError(403, "You don't have the rights to write to this repo")
        return repo

    @staticmethod
    def _resolve_rev(repo: FakeRepo, revision: str) -> str:
        if revision == "main":
            return repo.head
        if _COMMIT_HASH.fullmatch(revision) and revision in repo.commits:
            return revision
        raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # -- endpoints --------------------------------------------------------------------------------------------------

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.hub._lock:
            repo = self._readable(repo_type, repo_id)
            sha = self._resolve_rev(repo, revision)
            info = {"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id,
                    "author": repo_id.split("/")[0], "sha": sha, "private": repo.private, "gated": repo.gated,
                    "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                    "createdAt": _EPOCH.isoformat().replace("+00:00", ".000Z"),
                    "lastModified": _EPOCH.isoformat().replace("+00:00", ".000Z"),
                    "siblings": [{"rfilename": name} for name in sorted(repo.commits[sha])]}
        self._send_json(200, info)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        paths = form.get("paths", [])
        with self.hub._lock:
            repo = self._readable(repo_type, repo_id)
            tree = repo.commits[self._resolve_rev(repo, revision)]
            entries = []
            for path in paths:
                stored = tree.get(path)
                if stored is not None:
                    entries.append(_file_entry(path, stored))
                elif any(name.startswith(path.rstrip("/") + "/") for name in tree):
                    entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": path.rstrip("/")})
        self._send_json(200, entries)

    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, filename: str) -> None:
        with self.hub._lock:
            repo = self._readable(repo_type, repo_id)
            sha = self._resolve_rev(repo, revision)
            stored = repo.commits[sha].get(filename)
            if stored is None:
                raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
            truncate = method == "GET" and self.hub._take_truncation(unquote(urlsplit(self.path).path))
        headers = {"X-Repo-Commit": sha, "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                   "Content-Length": str(stored.size)}
        if stored.lfs:
            headers.update({"ETag": f'"{stored.sha256}"', "X-Linked-Etag": f'"{stored.sha256}"',
                            "X-Linked-Size": str(stored.size)})
        else:
            headers["ETag"] = f'"{stored.oid}"'
        self._send_head(200, headers)
        if method == "HEAD":
            return
        if truncate:
            self.close_connection = True
            if stored.data is not None:
                self.wfile.write(stored.data[: stored.size // 2])
            return
        try:
            if stored.data is not None:
                self.wfile.write(stored.data)
            else:  # a declared file: zeros, for as long as the client keeps reading
                sent = 0
                while sent < stored.size:
                    n = min(_STREAM_CHUNK, stored.size - sent)
                    self.wfile.write(b"\0" * n)
                    sent += n
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _create_repo(self, payload: dict) -> None:
        user = self._user()
        if user is None:
            raise _HubError(401, "You must be authenticated to create a repo")
        name, namespace = payload.get("name"), payload.get("organization") or user
        repo_type = payload.get("type") or "model"
        if not isinstance(name, str) or repo_type not in _URL_PREFIX:
            raise _HubError(400, "invalid repo name or type")
        if namespace != user:
            raise _HubError(403, f"You don't have the rights to create a {repo_type} under the namespace {namespace}")
        private = payload.get("visibility") == "private" or payload.get("private") is True
        repo_id = f"{namespace}/{name}"
        url = f"{self.hub.url}/{_URL_PREFIX[repo_type]}{repo_id}"
        with self.hub._lock:
            if (repo_type, repo_id) in self.hub.repos:
                raise _HubError(409, f"You already created this {repo_type} repo", body={"url": url})
            self.hub.add_repo(repo_id, private=private, repo_type=repo_type)
        self._send_json(200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _validate_yaml(self, payload: dict) -> None:
        """A README's metadata (the YAML front matter between `---` lines), as the hub checks it before a commit
        that adds a README.md: it must be a YAML mapping; `configs` entries need a `config_name` and `data_files`.
        Answers {"errors": [...], "warnings": [...]}, 400 when there are errors."""
        import yaml

        content = payload.get("content")
        errors: list[dict] = []
        if not isinstance(content, str):
            errors.append({"message": "content must be a string"})
        elif content.startswith("---\n") and "\n---" in content[4:]:
            try:
                meta = yaml.safe_load(content[4:content.index("\n---", 4)])
            except yaml.YAMLError as exc:
                meta, errors = None, [{"message": f"invalid YAML: {exc}"}]
            if not errors and not isinstance(meta, dict):
                errors.append({"message": "the metadata must be a YAML mapping"})
            for entry in (meta or {}).get("configs", []) if isinstance(meta, dict) else []:
                if not isinstance(entry, dict) or not isinstance(entry.get("config_name"), str) \
                        or "data_files" not in entry:
                    errors.append({"message": f"configs: an entry needs config_name and data_files: {entry!r}"})
        if errors:
            raise _HubError(400, errors[0]["message"], body={"errors": errors, "warnings": []})
        self._send_json(200, {"errors": [], "warnings": []})

    def _preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict) -> None:
        files = payload.get("files")
        if not isinstance(files, list):
            raise _HubError(400, "files must be a list")
        with self.hub._lock:
            repo = self._writable(repo_type, repo_id)
            tree = repo.commits[self._resolve_rev(repo, revision)]
            answer = []
            for item in files:
                path, size = item.get("path"), item.get("size")
                if not isinstance(path, str) or not isinstance(size, int):
                    raise _HubError(400, "each file needs a path and a size")
                lfs = size > self.hub.regular_max_bytes
                stored = tree.get(path)
                oid = None if stored is None else (stored.sha256 if stored.lfs else stored.oid)
                answer.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                               "oid": oid})
            head = repo.head
        self._send_json(200, {"files": answer, "commitOid": head})

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        try:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        except ValueError:
            raise _HubError(400, "the commit body is not NDJSON") from None
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "the commit body must start with a header line")
        files: dict[str, StoredFile] = {}
        deleted: list[str] = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            if key == "file":
                if value.get("encoding") != "base64" or not isinstance(value.get("path"), str):
                    raise _HubError(400, "file lines need a path and base64 content")
                data = base64.b64decode(value.get("content", ""), validate=True)
                if len(data) > self.hub.regular_max_bytes:
                    raise _HubError(400, f"{value['path']} is too big for a regular upload: use LFS")
                files[value["path"]] = _regular(data)
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value.get("path", ""))
            elif key == "lfsFile":
                raise _HubError(400, "this fake hub stores no LFS objects")
            else:
                raise _HubError(400, f"unknown commit line {key!r}")
        with self.hub._lock:
            repo = self._writable(repo_type, repo_id)
            if self._resolve_rev(repo, revision) != repo.head:
                raise _HubError(400, "commits go to the head of main only")
            sha = self.hub._new_commit(repo, files, tuple(deleted))
        prefix = _URL_PREFIX[repo_type]
        self._send_json(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.hub.url}/{prefix}{repo_id}"
                              f"/commit/{sha}", "hookOutput": ""})

    def _settings(self, repo_type: str, repo_id: str, payload: dict) -> None:
        with self.hub._lock:
            repo = self._writable(repo_type, repo_id)
            if "visibility" in payload:
                if payload["visibility"] not in ("private", "public"):
                    raise _HubError(400, "visibility must be private or public")
                repo.private = payload["visibility"] == "private"
            elif isinstance(payload.get("private"), bool):
                repo.private = payload["private"]
            if "gated" in payload:
                repo.gated = payload["gated"] not in (False, None)
        self._send_json(200, {})

    # -- wire -------------------------------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_json(self, status: int, payload: object, headers: dict[str, str] | None = None,
                   head: bool = False) -> None:
        data = json.dumps(payload).encode()
        self._send_head(status, {**(headers or {}), "Content-Type": "application/json",
                                 "Content-Length": str(len(data))})
        if not head:
            self.wfile.write(data)


def _json_body(body: bytes) -> dict:
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        raise _HubError(400, "the body is not JSON") from None
    if not isinstance(payload, dict):
        raise _HubError(400, "the body must be a JSON object")
    return payload


def _file_entry(path: str, stored: StoredFile) -> dict:
    entry: dict = {"type": "file", "oid": stored.oid, "size": stored.size, "path": path}
    if stored.lfs:
        pointer = _lfs_pointer(stored.sha256, stored.size)
        entry["lfs"] = {"oid": stored.sha256, "size": stored.size, "pointerSize": len(pointer)}
    return entry
