"""A Hugging Face Hub compatible HTTP server for tests (stdlib only, in memory).

Point the real client at it with ``HF_ENDPOINT=server.url`` (set before huggingface_hub/transformers are
imported, so in practice in a subprocess). Design choices:

- One ``ThreadingHTTPServer`` (HTTP/1.1 keep-alive, daemon threads) and one ``RLock`` around the whole store.
  Request bodies are always read in full (``Content-Length`` or chunked) before answering, and every response
  carries ``Content-Length``, so keep-alive connections never desynchronise.
- URLs are split on ``/`` first and each segment is unquoted afterwards: the client quotes revisions and tree
  paths with ``safe=""`` (``refs%2Fpr%2F1``) but keeps ``/`` in resolve file names.
- Storage is git-like: blobs are keyed by sha256 of the content (one global, deduplicated store); a commit
  holds its full tree ``path -> Entry``; branches, tags and ``refs/pr/N`` point at commit ids (40 lowercase
  hex). Repo creation makes ``main`` with an initial commit holding ``.gitattributes``, like the real Hub.
  Regular files have the git blob sha1 as oid/ETag; LFS files the sha256 (tree ``oid`` is the pointer's sha1).
- Upload mode: "lfs" for files of ``lfs_threshold`` bytes or more or with an ``lfs_suffixes`` name, "regular"
  otherwise, or always "regular" with ``all_regular=True`` (needed when the client has ``hf_xet`` and xet is
  not disabled: lfs-mode files would go through xet, which this server does not speak; xet endpoints
  answer 501 and no xet header is ever sent).
- No-op pushes: preupload answers, for each path that already exists, the oid of the stored file in the
  requested mode (git sha1 for "regular", sha256 for "lfs"); the client compares it to its local oid, drops
  unchanged files and, when nothing is left, skips the commit call and reads ``repo_info`` instead. A commit
  that still arrives and changes nothing creates no commit either: the answer is the current head.
- LFS: the batch API answers a signed ``/_lfs/{oid}/{size}?sig=`` href (HMAC with a per-server secret; the PUT
  carries no auth header) plus a ``verify`` action; the PUT checks size and sha256. Known objects get no
  ``actions``, so the client skips the upload.
- Auth: ``tokens`` maps token -> user. An unknown token is a 401 ``Invalid credentials in Authorization
  header`` on any route; writes need a token (401) and the repo's namespace to be the user's (403); a private
  repo is a 404 ``RepoNotFound`` to anyone but its owner. The authorization header is never logged.
- Tests can inject faults (``inject``: status, delay, dropped connection) and inspect ``requests`` (method,
  path without query, has_auth_header) and ``range_requests`` (path, Range header).
- Standalone: ``python tests/hub_server.py --port 0 --token hf_writer=alice`` prints the URL as its first
  stdout line, then serves until killed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".gguf", ".msgpack", ".npy",
                ".npz", ".pkl", ".png", ".jpg", ".jpeg", ".zip", ".gz", ".tar", ".parquet", ".arrow")
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob holding `data`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """Content of the git LFS pointer file for an object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _truthy(query: dict[str, list[str]], key: str) -> bool:
    return query.get(key, ["false"])[-1].lower() in ("1", "true", "yes")


class HubError(Exception):
    """An HTTP error answer: status, message, optional `X-Error-Code` and extra headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass(frozen=True)
class Entry:
    """A file in a tree: content sha256, size, storage kind and git sha1 of the content."""

    sha256: str
    size: int
    lfs: bool
    sha1: str

    @property
    def git_oid(self) -> str:
        return git_blob_sha1(lfs_pointer(self.sha256, self.size)) if self.lfs else self.sha1

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.sha1


@dataclass
class Commit:
    id: str
    parent: str | None
    title: str
    message: str
    date: str
    author: str
    tree: dict[str, Entry]


@dataclass
class Repo:
    kind: str
    rid: str
    owner: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pulls: dict[int, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return URL_PREFIX[self.kind] + self.rid


@dataclass
class Fault:
    method: str
    pattern: re.Pattern
    status: int | None
    times: int
    delay: float
    body: Any
    headers: dict
    cut_after: int | None = None


@dataclass
class Req:
    method: str
    path: str
    segs: list[str]
    query: dict[str, list[str]]
    headers: Any
    body: bytes
    base: str
    user: str | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as e:
            raise HubError(400, f"Invalid JSON body: {e}") from e


Response = tuple[int, dict[str, str], bytes]


def _json(obj: Any, status: int = 200, headers: dict | None = None) -> Response:
    headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
    return status, headers, json.dumps(obj).encode()


class HubServer:
    """In-memory Hub: `HubServer(tokens).start()`, then `HF_ENDPOINT=server.url` in the client's env."""

    def __init__(self, tokens: dict[str, str] | None = None, *, lfs_threshold: int = 10 * 1024 * 1024,
                 lfs_suffixes: tuple[str, ...] = LFS_SUFFIXES, all_regular: bool = False,
                 host: str = "127.0.0.1", port: int = 0):
        self.tokens = dict(tokens or {})
        self.lfs_threshold, self.lfs_suffixes, self.all_regular = lfs_threshold, lfs_suffixes, all_regular
        self.host, self.port = host, port
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, bool]] = []
        self.range_requests: list[tuple[str, str]] = []
        self._faults: list[Fault] = []
        self._secret = secrets.token_bytes(32)
        self._seq = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle and test hooks
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HubServer:
        """Serve on a daemon thread (a free port when `port=0`); returns self."""
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = _Server((self.host, self.port), handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, method: str, path_regex: str, status: int | None = 500, times: int = 1,
               delay: float = 0.0, body: Any = None, headers: dict | None = None,
               cut_after: int | None = None) -> None:
        """Make the next `times` requests matching `method` ("*": any) and `path_regex` (searched in the path
        without query) sleep `delay` seconds, then answer `status`; with `status=None` answer normally, and
        with `cut_after=N` also hang up after N body bytes (a broken download: the client retries it, with
        `Range` only when it had received a full 10 MB chunk)."""
        with self.lock:
            self._faults.append(Fault(method.upper(), re.compile(path_regex), status, times, delay, body,
                                      dict(headers or {}), cut_after))

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def get_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """Content of a stored file (for assertions)."""
        with self.lock:
            repo = self.repos[(repo_type, repo_id)]
            return self.blobs[repo.commits[self._resolve(repo, revision)].tree[path].sha256]

    # ------------------------------------------------------------------ request entry point
    def handle(self, req: Req) -> tuple[Response, int | None]:
        """Answer one request: (status, headers, body) and the number of body bytes to send before hanging up
        (None: all of them)."""
        with self.lock:
            self.requests.append((req.method, req.path, "Authorization" in req.headers))
            fault = next((f for f in self._faults
                          if f.method in ("*", req.method) and f.pattern.search(req.path)), None)
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
        cut = None
        if fault is not None:
            time.sleep(fault.delay)
            cut = fault.cut_after
            if fault.status is not None:
                body = fault.body if fault.body is not None else {"error": "Injected fault"}
                if isinstance(body, (dict, list)):
                    headers = {"X-Error-Message": "Injected fault", **fault.headers}
                    return _json(body, fault.status, headers), cut
                payload = body.encode() if isinstance(body, str) else bytes(body)
                return (fault.status, fault.headers, payload), cut
        try:
            return self._route(req), cut
        except HubError as e:
            message = e.message.encode("ascii", "replace").decode().replace("\n", " ")
            headers = {"X-Error-Message": message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            return _json({"error": e.message}, e.status, headers), cut

    def _route(self, r: Req) -> Response:
        s = r.segs
        if s[:1] == ["_lfs"] and len(s) == 3 and r.method == "PUT":
            return self._lfs_put(r, s[1], s[2])
        auth = r.headers.get("Authorization")
        if auth:
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else auth.strip()
            r.user = self.tokens.get(token)
            if r.user is None:
                raise HubError(401, INVALID_CREDENTIALS)
        if s[:1] == ["api"]:
            rest = s[1:]
            if rest == ["whoami-v2"] and r.method == "GET":
                return self._whoami(r)
            if rest == ["agent-harnesses"] and r.method == "GET":  # the client's user agent detection
                return _json({"standardEnvVars": [], "harnesses": {}})
            if rest == ["repos", "create"] and r.method == "POST":
                return self._create_repo(r)
            if rest == ["repos", "delete"] and r.method == "DELETE":
                return self._delete_repo(r)
            if rest == ["validate-yaml"] and r.method == "POST":
                return self._validate_yaml(r)
            if len(rest) >= 3 and rest[0] in KINDS:
                return self._repo_api(r, KINDS[rest[0]], f"{rest[1]}/{rest[2]}", rest[3:])
            if len(rest) == 2 and rest[0] in KINDS:  # a canonical (namespace-less) id: none are stored
                raise HubError(404, "Repository not found", "RepoNotFound")
            raise HubError(404, f"Unknown API route {r.path}")
        kind, rest = ("model", s)
        if s and s[0] in ("datasets", "spaces"):
            kind, rest = KINDS[s[0]], s[1:]
        if len(rest) >= 6 and rest[1].endswith(".git") and rest[2:5] == ["info", "lfs", "objects"]:
            return self._lfs_api(r, kind, f"{rest[0]}/{rest[1][:-4]}", rest[5])
        if len(rest) >= 5 and rest[2] == "resolve" and r.method in ("GET", "HEAD"):
            return self._resolve_file(r, kind, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]))
        if len(rest) >= 4 and rest[1] == "resolve":  # a canonical (namespace-less) id: none are stored
            raise HubError(404, "Repository not found", "RepoNotFound")
        raise HubError(404, f"Not found: {r.path}")

    # ------------------------------------------------------------------ store helpers (call under self.lock)
    def _repo(self, kind: str, rid: str, user: str | None, write: bool = False) -> Repo:
        repo = self.repos.get((kind, rid))
        if write and user is None:
            raise HubError(401, "You must be authenticated (Authorization header) to write")
        if repo is None or (repo.private and user != repo.owner):
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write and user != repo.owner:
            raise HubError(403, f"You don't have the rights to write to {repo.path} (user {user})")
        return repo

    def _resolve(self, repo: Repo, rev: str | None) -> str:
        rev = rev or "main"
        pr = re.fullmatch(r"refs/pr/(\d+)", rev)
        if pr and int(pr.group(1)) in repo.pulls:
            return repo.pulls[int(pr.group(1))]
        for prefix, table in (("refs/heads/", repo.branches), ("refs/tags/", repo.tags), ("", repo.branches),
                              ("", repo.tags)):
            if rev.startswith(prefix) and rev[len(prefix):] in table:
                return table[rev[len(prefix):]]
        if COMMIT_RE.match(rev) and rev in repo.commits:
            return rev
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _new_commit(self, repo: Repo, parent: str | None, tree: dict[str, Entry], title: str, message: str,
                    author: str) -> Commit:
        self._seq += 1
        date = _now()
        seed = json.dumps([repo.path, parent, sorted((p, e.git_oid) for p, e in tree.items()), title, message,
                           author, date, self._seq])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, message, date, author, tree)
        repo.commits[commit.id] = commit
        return commit

    def _store(self, data: bytes, lfs: bool) -> Entry:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs.setdefault(sha, data)
        return Entry(sha, len(data), lfs, git_blob_sha1(data))

    def _history(self, repo: Repo, cid: str) -> list[Commit]:
        out, cur = [], cid
        while cur is not None:
            out.append(repo.commits[cur])
            cur = repo.commits[cur].parent
        return out

    def _file_json(self, path: str, e: Entry) -> dict:
        out: dict[str, Any] = {"type": "file", "oid": e.git_oid, "size": e.size, "path": path}
        if e.lfs:
            out["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": len(lfs_pointer(e.sha256, e.size))}
        return out

    def _dir_json(self, tree: dict[str, Entry], path: str) -> dict:
        inner = sorted((p, e.git_oid) for p, e in tree.items() if p.startswith(path + "/"))
        return {"type": "directory", "oid": hashlib.sha1(json.dumps(inner).encode()).hexdigest(), "size": 0,
                "path": path}

    def _entry_json(self, tree: dict[str, Entry], path: str) -> dict | None:
        if path in tree:
            return self._file_json(path, tree[path])
        return self._dir_json(tree, path) if any(p.startswith(path + "/") for p in tree) else None

    # ------------------------------------------------------------------ account and repo management
    def _whoami(self, r: Req) -> Response:
        if r.user is None:
            raise HubError(401, "You must be authenticated to call whoami")
        return _json({"type": "user", "id": hashlib.sha1(r.user.encode()).hexdigest()[:24], "name": r.user,
                      "fullname": r.user, "email": f"{r.user}@example.invalid", "emailVerified": True,
                      "isPro": False, "orgs": [],
                      "auth": {"type": "access_token",
                               "accessToken": {"displayName": "test", "role": "write"}}})

    def _create_repo(self, r: Req) -> Response:
        body = r.json()
        if r.user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        kind, name = body.get("type") or "model", body.get("name") or ""
        namespace = body.get("organization") or r.user
        if kind not in URL_PREFIX or not NAME_RE.match(name) or not NAME_RE.match(namespace):
            raise HubError(400, f"Invalid repo type or name: {kind} {namespace}/{name}")
        if namespace != r.user:
            raise HubError(403, f"You don't have the rights to create a {kind} in the namespace {namespace}")
        rid = f"{namespace}/{name}"
        url = f"{r.base}/{URL_PREFIX[kind]}{rid}"
        private = body.get("visibility", "private" if body.get("private") else "public") == "private"
        with self.lock:
            if (kind, rid) in self.repos:
                return _json({"error": f"You already created this {kind} repo", "url": url}, 409,
                             {"X-Error-Message": f"You already created this {kind} repo"})
            repo = Repo(kind, rid, r.user, private, _now())
            tree = {".gitattributes": self._store(GITATTRIBUTES, False)}
            repo.branches["main"] = self._new_commit(repo, None, tree, "initial commit", "", r.user).id
            self.repos[(kind, rid)] = repo
        return _json({"url": url, "name": rid, "id": hashlib.sha1(url.encode()).hexdigest()[:24]})

    def _delete_repo(self, r: Req) -> Response:
        body = r.json()
        kind = body.get("type") or "model"
        rid = f"{body.get('organization') or r.user}/{body.get('name')}"
        with self.lock:
            self._repo(kind, rid, r.user, write=True)
            del self.repos[(kind, rid)]
        return 200, {}, b""

    def _validate_yaml(self, r: Req) -> Response:
        content = str(r.json().get("content", ""))
        errors = []
        if content.startswith("---"):
            lines = content.splitlines()
            end = next((i for i, line in enumerate(lines[1:], 1) if line.rstrip() == "---"), None)
            if end is None:
                errors.append({"message": "YAML front matter is not closed by '---'"})
            else:
                errors += [{"message": f"Tab in YAML indentation at line {i + 1}"} for i, line in
                           enumerate(lines[1:end], 1) if line.startswith("\t")]
        return _json({"errors": errors, "warnings": []}, 400 if errors else 200)

    # ------------------------------------------------------------------ /api/{kind}s/{ns}/{name}/...
    def _repo_api(self, r: Req, kind: str, rid: str, rest: list[str]) -> Response:
        op, arg = (rest[0] if rest else ""), (rest[1] if len(rest) > 1 else None)
        if op.startswith("xet-"):
            raise HubError(501, "Xet is not supported by this test server: use HF_HUB_DISABLE_XET=1 or "
                                "HubServer(all_regular=True)")
        write = (r.method, op) in {("POST", "branch"), ("DELETE", "branch"), ("POST", "tag"),
                                   ("DELETE", "tag"), ("POST", "preupload"), ("POST", "commit"),
                                   ("PUT", "settings")}
        with self.lock:
            repo = self._repo(kind, rid, r.user, write)
            if r.method == "GET" and (not rest or op == "revision"):
                return self._info(r, repo, arg)
            if r.method == "GET" and op == "tree":
                return self._tree(r, repo, arg, "/".join(rest[2:]).strip("/"))
            if r.method == "POST" and op == "paths-info":
                return self._paths_info(r, repo, arg)
            if r.method == "GET" and op == "refs":
                return self._refs(r, repo)
            if r.method == "GET" and op == "commits":
                history = self._history(repo, self._resolve(repo, arg))
                return _json([{"id": c.id, "title": c.title, "message": c.message, "date": c.date,
                               "authors": [{"user": c.author}]} for c in history])
            if op == "branch" and arg:
                return self._branch(r, repo, arg)
            if op == "tag":
                return self._tag(r, repo, arg)
            if op == "preupload":
                return self._preupload(r, repo, arg)
            if op == "commit":
                return self._commit(r, repo, arg or "main")
            if op == "settings":
                body = r.json()
                if "private" in body or "visibility" in body:
                    visibility = body.get("visibility", "private" if body.get("private") else "public")
                    repo.private = visibility == "private"
                return _json({})
        raise HubError(404, f"Unknown repo route {r.method} {r.path}")

    def _info(self, r: Req, repo: Repo, rev: str | None) -> Response:
        cid = self._resolve(repo, rev)
        commit, blobs = repo.commits[cid], _truthy(r.query, "blobs")
        siblings = []
        for path, e in sorted(commit.tree.items()):
            sib: dict[str, Any] = {"rfilename": path}
            if blobs:
                sib.update(size=e.size, blobId=e.git_oid)
                if e.lfs:
                    sib["lfs"] = {"size": e.size, "sha256": e.sha256,
                                  "pointerSize": len(lfs_pointer(e.sha256, e.size))}
            siblings.append(sib)
        return _json({"_id": hashlib.sha1(repo.path.encode()).hexdigest()[:24], "id": repo.rid,
                      "author": repo.owner, "sha": cid, "lastModified": commit.date,
                      "createdAt": repo.created_at,
                      "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                      "tags": [], "siblings": siblings,
                      "usedStorage": sum(e.size for e in commit.tree.values())})

    def _tree(self, r: Req, repo: Repo, rev: str | None, path: str) -> Response:
        head = self._resolve(repo, rev)
        tree, recursive = repo.commits[head].tree, _truthy(r.query, "recursive")
        prefix = f"{path}/" if path else ""
        if path and not any(p.startswith(prefix) for p in tree):
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound",
                           {"X-Repo-Commit": head})
        paths: set[str] = set()
        for p in tree:
            if p.startswith(prefix):
                parts = p[len(prefix):].split("/")
                depth = len(parts) if recursive else 1
                paths.update(prefix + "/".join(parts[:i]) for i in range(1, depth + 1))
        entries = [self._entry_json(tree, p) for p in sorted(paths)]
        return _json(sorted(entries, key=lambda e: (e["type"] == "file", e["path"])))

    def _paths_info(self, r: Req, repo: Repo, rev: str | None) -> Response:
        head = self._resolve(repo, rev)
        if "json" in (r.headers.get("Content-Type") or ""):
            paths = r.json().get("paths", [])
        else:
            paths = parse_qs(r.body.decode()).get("paths", [])
        out = [self._entry_json(repo.commits[head].tree, str(p).strip("/")) for p in paths]
        return _json([e for e in out if e is not None])

    def _refs(self, r: Req, repo: Repo) -> Response:
        def refs(table: dict, ref: str) -> list[dict]:
            return [{"name": n, "ref": f"{ref}{n}", "targetCommit": c} for n, c in sorted(table.items())]
        out = {"branches": refs(repo.branches, "refs/heads/"), "tags": refs(repo.tags, "refs/tags/"),
               "converts": []}
        if _truthy(r.query, "include_prs"):
            out["pullRequests"] = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": c}
                                   for n, c in sorted(repo.pulls.items())]
        return _json(out)

    def _branch(self, r: Req, repo: Repo, name: str) -> Response:
        if r.method == "DELETE":
            if name not in repo.branches:
                raise HubError(404, f"Branch {name} not found", "RevisionNotFound")
            if name == "main":
                raise HubError(403, "Cannot delete the default branch")
            del repo.branches[name]
            return _json({})
        if name in repo.branches:
            raise HubError(409, f"Reference refs/heads/{name} already exists")
        repo.branches[name] = self._resolve(repo, r.json().get("startingPoint"))
        return _json({})

    def _tag(self, r: Req, repo: Repo, arg: str | None) -> Response:
        if r.method == "DELETE":
            if arg not in repo.tags:
                raise HubError(404, f"Tag {arg} not found", "RevisionNotFound")
            del repo.tags[arg]
            return _json({})
        tag = r.json().get("tag") or ""
        if not tag:
            raise HubError(400, "Missing tag name")
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = self._resolve(repo, arg)
        return _json({})

    def _preupload(self, r: Req, repo: Repo, rev: str | None) -> Response:
        tree = repo.commits[self._resolve(repo, rev)].tree
        out = []
        for f in r.json().get("files", []):
            path, size = str(f.get("path", "")), int(f.get("size", 0))
            big = size >= self.lfs_threshold or path.lower().endswith(self.lfs_suffixes)
            lfs = big and not self.all_regular
            info: dict[str, Any] = {"path": path, "uploadMode": "lfs" if lfs else "regular",
                                    "shouldIgnore": False}
            if path in tree:
                info["oid"] = tree[path].sha256 if lfs else tree[path].sha1
            out.append(info)
        return _json({"files": out})

    def _commit(self, r: Req, repo: Repo, rev: str) -> Response:
        try:
            lines = [json.loads(line) for line in r.body.splitlines() if line.strip()]
        except ValueError as e:
            raise HubError(400, f"Invalid ndjson body: {e}") from e
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first ndjson line must be the commit header")
        header = lines[0].get("value") or {}
        title, parent = str(header.get("summary") or "").strip(), header.get("parentCommit")
        if not title:
            raise HubError(400, "Commit summary (title) is required")
        create_pr = _truthy(r.query, "create_pr")
        if create_pr:
            table, key = repo.pulls, max(repo.pulls, default=0) + 1
            head = parent or self._resolve(repo, rev)
            if head not in repo.commits:
                raise HubError(404, f"Invalid rev id: {head}", "RevisionNotFound")
        else:
            self._resolve(repo, rev)  # RevisionNotFound first
            pr = re.fullmatch(r"refs/pr/(\d+)", rev)
            branch = rev[len("refs/heads/"):] if rev.startswith("refs/heads/") else rev
            if pr and int(pr.group(1)) in repo.pulls:
                table, key = repo.pulls, int(pr.group(1))
            elif branch in repo.branches:
                table, key = repo.branches, branch
            else:
                raise HubError(400, f"Can only commit to a branch, not to {rev}")
            head = table[key]
            if parent is not None and parent != head:
                raise HubError(412, f"Parent commit {parent} is not the head of {rev} ({head}): a commit "
                                    "happened since. Please refresh and try again.")
        tree = dict(repo.commits[head].tree)
        for line in lines[1:]:
            self._apply(tree, line.get("key"), line.get("value") or {})
        for path in tree:
            parts = path.split("/")
            if any("/".join(parts[:i]) in tree for i in range(1, len(parts))):
                raise HubError(400, f"{path} conflicts with a file of the same name as one of its folders")
        if tree == repo.commits[head].tree and not create_pr:
            cid = head  # nothing changed: no empty commit, answer the current head
        else:
            cid = self._new_commit(repo, head, tree, title, str(header.get("description") or ""), r.user).id
            table[key] = cid
        out = {"success": True, "commitOid": cid, "commitUrl": f"{r.base}/{repo.path}/commit/{cid}",
               "hookOutput": ""}
        if create_pr:
            out["pullRequestUrl"] = f"{r.base}/{repo.path}/discussions/{key}"
        return _json(out)

    def _apply(self, tree: dict[str, Entry], key: str | None, value: dict) -> None:
        path = str(value.get("path") or "").strip()
        parts = path.rstrip("/").split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise HubError(400, f"Invalid path in commit: {path!r}")
        if key == "file":
            content = value.get("content") or ""
            try:
                b64 = value.get("encoding") == "base64"
                data = base64.b64decode(content, validate=True) if b64 else content.encode()
            except ValueError as e:
                raise HubError(400, f"Invalid base64 content for {path}") from e
            tree[path] = self._store(data, False)
        elif key == "lfsFile":
            oid, size = value.get("oid"), value.get("size")
            blob = self.blobs.get(oid)
            if value.get("algo", "sha256") != "sha256" or blob is None or len(blob) != size:
                raise HubError(400, f"LFS object {oid} ({size} bytes) for {path} was not uploaded")
            tree[path] = Entry(oid, size, True, git_blob_sha1(blob))
        elif key == "deletedFile":
            if tree.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            doomed = [p for p in tree if p.startswith(path.rstrip("/") + "/")]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in doomed:
                del tree[p]
        else:
            raise HubError(400, f"Unknown commit operation {key!r}")

    # ------------------------------------------------------------------ LFS
    def _sign(self, oid: str, size: int) -> str:
        return hmac.new(self._secret, f"{oid}:{size}".encode(), hashlib.sha256).hexdigest()

    def _lfs_api(self, r: Req, kind: str, rid: str, action: str) -> Response:
        body = r.json()
        with self.lock:
            repo = self._repo(kind, rid, r.user, write=True)
            if action == "verify" and r.method == "POST":
                blob = self.blobs.get(str(body.get("oid")))
                if blob is None or len(blob) != body.get("size"):
                    raise HubError(404, f"LFS object {body.get('oid')} not found")
                return _json({})
            if action != "batch" or r.method != "POST" or body.get("operation") != "upload":
                raise HubError(400, "Only the LFS batch 'upload' operation is supported")
            objects = []
            for obj in body.get("objects", []):
                oid, size = str(obj.get("oid")), obj.get("size")
                if not SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
                    objects.append({"oid": oid, "size": size if isinstance(size, int) else 0,
                                    "error": {"code": 422, "message": "Invalid oid or size"}})
                elif oid in self.blobs and len(self.blobs[oid]) == size:
                    objects.append({"oid": oid, "size": size})
                else:
                    href = f"{r.base}/_lfs/{oid}/{size}?sig={self._sign(oid, size)}"
                    verify = f"{r.base}/{repo.path}.git/info/lfs/objects/verify"
                    objects.append({"oid": oid, "size": size, "authenticated": True,
                                    "actions": {"upload": {"href": href}, "verify": {"href": verify}}})
        lfs_json = {"Content-Type": "application/vnd.git-lfs+json"}
        return _json({"transfer": "basic", "objects": objects}, headers=lfs_json)

    def _lfs_put(self, r: Req, oid: str, size: str) -> Response:
        sig = r.query.get("sig", [""])[-1]
        if not size.isdigit() or not hmac.compare_digest(sig, self._sign(oid, int(size))):
            raise HubError(403, "Invalid or missing upload signature")
        if len(r.body) != int(size) or hashlib.sha256(r.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match oid {oid} / size {size}")
        with self.lock:
            self.blobs.setdefault(oid, r.body)
        return 200, {}, b""

    # ------------------------------------------------------------------ downloads
    def _resolve_file(self, r: Req, kind: str, rid: str, rev: str, path: str) -> Response:
        with self.lock:
            repo = self._repo(kind, rid, r.user)
            cid = self._resolve(repo, rev)
            entry = repo.commits[cid].tree.get(path)
            if entry is None:
                raise HubError(404, f"{path} does not exist at {rev}", "EntryNotFound",
                               {"X-Repo-Commit": cid})
            data = self.blobs[entry.sha256]
        headers = {"X-Repo-Commit": cid, "ETag": f'"{entry.etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        spec = r.headers.get("Range")
        if not spec:
            return 200, headers, data
        with self.lock:
            self.range_requests.append((r.path, spec))
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", spec.strip())
        if m is None or m.groups() == ("", ""):
            return 200, headers, data  # multi-range or malformed: serve the whole file
        size = len(data)
        start, end = m.groups()
        first, last = (size - int(end), size - 1) if start == "" else (int(start), int(end or size - 1))
        first, last = max(first, 0), min(last, size - 1)
        if first > last:
            raise HubError(416, f"Range {spec} not satisfiable", None, {"Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        return 206, headers, data[first:last + 1]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients dropping connections are routine
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llmkit-test-hub/1"
    hub: HubServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: request lines and headers may carry tokens."""

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537).strip():
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        body = self._read_body()
        path, _, query = self.path.partition("?")
        host = self.headers.get("Host")
        req = Req(self.command, path, [unquote(s) for s in path.split("/")[1:]],
                  parse_qs(query, keep_blank_values=True), self.headers, body,
                  f"http://{host}" if host else self.hub.url)
        try:
            (status, headers, payload), cut = self.hub.handle(req)
        except Exception as e:  # a server bug: answer 500 instead of dropping the connection
            (status, headers, payload), cut = _json({"error": f"Internal error: {e!r}"}, 500), None
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload[:cut])
            if cut is not None:
                self.wfile.flush()
                self.close_connection = True
        except ConnectionError:
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch


def main(argv: list[str] | None = None) -> None:
    """Serve until killed; the URL is the first stdout line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", action="append", default=[], help="TOKEN=USER (repeatable)")
    parser.add_argument("--all-regular", action="store_true", help="uploadMode 'regular' for every file")
    parser.add_argument("--lfs-threshold", type=int, default=10 * 1024 * 1024)
    args = parser.parse_args(argv)
    tokens = dict(t.split("=", 1) for t in args.token)
    server = HubServer(tokens, lfs_threshold=args.lfs_threshold, all_regular=args.all_regular, host=args.host,
                       port=args.port).start()
    print(server.url, flush=True)
    try:
        server._thread.join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
