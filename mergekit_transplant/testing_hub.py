"""A Hugging Face Hub-compatible file server on 127.0.0.1, for tests and benchmarks.

There is no Hub in CI, and a mocked client would prove nothing about what
``huggingface_hub`` really sends. This serves local model folders as Hub repos
over real HTTP with the endpoints and headers the real client uses:

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: model
  info (``sha``, ``siblings``);
- ``GET /api/models/{repo}/tree/{rev}[/{path}]``: the file listing with sizes
  and LFS ``oid``s (``snapshot_download``, ``list_repo_files``);
- ``POST /api/models/{repo}/paths-info/{rev}`` (``HfFileSystem``, ``file_exists``);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: the file, with ``ETag``,
  ``X-Repo-Commit``, ``X-Linked-Etag``/``X-Linked-Size`` for LFS files,
  ``Content-Length``, and ``Range`` answered with ``206 Partial Content``;
- 404s carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
  ``EntryNotFound``) so the client raises its own typed errors.

Every request is logged with the body bytes it sent, so a test can assert how
much a command transferred. Faults on demand: ``fail_halfway(pattern)`` cuts
the connection after half of a matching file's bytes, ``short_range(pattern)``
answers a matching ranged request with fewer bytes than asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

#: files at least this large, and every ``*.safetensors``, are served as LFS files (as the Hub does)
LFS_THRESHOLD = 10 * 1024 * 1024
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class RepoFile:
    path: str
    local: Path
    size: int
    sha256: str
    git_oid: str

    @property
    def lfs(self) -> bool:
        return self.path.endswith(".safetensors") or self.size >= LFS_THRESHOLD


@dataclass
class Commit:
    sha: str
    files: Dict[str, RepoFile]


@dataclass
class Repo:
    repo_id: str
    commits: Dict[str, Commit] = field(default_factory=dict)
    refs: Dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha

    def resolve(self, revision: str) -> Optional[Commit]:
        sha = self.refs.get(revision, revision)
        return self.commits.get(sha)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int
    sent: int  # body bytes written
    range: Optional[str] = None


def _git_oid(path: Path, size: int) -> str:
    h = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class LocalHub:
    """The server and its repos; ``with LocalHub() as hub:`` starts and stops it."""

    def __init__(self) -> None:
        self.repos: Dict[str, Repo] = {}
        self.log: List[Request] = []
        self._faults: List[Tuple[str, str, int]] = []  # (kind, URL path pattern, minimum request bytes)
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ repos

    def add_model(self, repo_id: str, folder: os.PathLike | str, *, branch: str = "main",
                  tags: Tuple[str, ...] = ()) -> str:
        """Commit every file of ``folder`` as a new revision of ``repo_id`` on ``branch``; returns its sha."""
        from mergekit_transplant.checkpoint.tensor_io import sha256_file

        folder = Path(folder)
        files = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            size = path.stat().st_size
            files[rel] = RepoFile(rel, path, size, sha256_file(path), _git_oid(path, size))
        repo = self.repos.setdefault(repo_id, Repo(repo_id))
        digest = hashlib.sha1(repo_id.encode() + str(len(repo.commits)).encode())
        for rel, f in files.items():
            digest.update(f"{rel}\0{f.sha256}\n".encode())
        sha = digest.hexdigest()
        repo.commits[sha] = Commit(sha, files)
        repo.refs[branch] = sha
        for tag in tags:
            repo.refs[tag] = sha
        return sha

    def head(self, repo_id: str, branch: str = "main") -> str:
        return self.repos[repo_id].refs[branch]

    # ------------------------------------------------------------------ faults

    def fail_halfway(self, pattern: str, min_bytes: int = 0) -> None:
        """A GET of more than ``min_bytes`` of a file whose URL path contains ``pattern`` sends half, then drops."""
        with self._lock:
            self._faults.append(("halfway", pattern, min_bytes))

    def short_range(self, pattern: str, min_bytes: int = 0) -> None:
        """A ranged GET of more than ``min_bytes`` of a matching file returns half the bytes asked for."""
        with self._lock:
            self._faults.append(("short", pattern, min_bytes))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _fault(self, kind: str, path: str, length: int) -> bool:
        with self._lock:
            return any(k == kind and p in path and length > m for k, p, m in self._faults)

    # ------------------------------------------------------------------ accounting

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()

    def bytes_sent(self, pattern: str = "") -> int:
        """Body bytes sent by every logged request whose path contains ``pattern``."""
        with self._lock:
            return sum(r.sent for r in self.log if pattern in r.path)

    def file_bytes_sent(self, repo_id: str, suffix: str = "") -> int:
        """Body bytes of ``/resolve/`` downloads from ``repo_id`` of files ending in ``suffix``."""
        prefix = f"/{repo_id}/resolve/"
        with self._lock:
            return sum(r.sent for r in self.log
                       if r.path.startswith(prefix) and r.path.endswith(suffix) and r.method == "GET")

    def repo_bytes(self, repo_id: str, *, weights: bool = True, branch: str = "main") -> int:
        """Bytes of every file of ``repo_id`` at ``branch`` (without ``*.safetensors`` unless ``weights``)."""
        files = self.repos[repo_id].resolve(branch).files.values()
        return sum(f.size for f in files if weights or not f.path.endswith(".safetensors"))

    def header_bytes(self, repo_id: str, branch: str = "main") -> int:
        """Bytes of every safetensors header (8-byte length + JSON) of ``repo_id`` at ``branch``."""
        total = 0
        for f in self.repos[repo_id].resolve(branch).files.values():
            if f.path.endswith(".safetensors"):
                with open(f.local, "rb") as fh:
                    total += 8 + int.from_bytes(fh.read(8), "little")
        return total

    def transfer_goal(self, target: str, donor: str, transplanted: int) -> Dict[str, int]:
        """What was sent against the issue's goal: the target + 1.1x the transplanted bytes + the headers.

        "Headers" are everything that is not tensor data: each safetensors
        header of both models, the donor's small files (configs, tokenizer,
        shard index) and the Hub API's JSON answers.
        """
        headers = (self.header_bytes(target) + self.header_bytes(donor) + self.repo_bytes(donor, weights=False)
                   + self.bytes_sent("/api/"))
        return {"sent": self.bytes_sent(), "target": self.repo_bytes(target), "transplanted": transplanted,
                "headers": headers, "budget": self.repo_bytes(target) + int(1.1 * transplanted) + headers}

    def _record(self, request: Request) -> None:
        with self._lock:
            self.log.append(request)

    # ------------------------------------------------------------------ server

    @property
    def url(self) -> str:
        assert self._server is not None, "the hub is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LocalHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def environment(self, cache_dir: os.PathLike | str) -> Dict[str, str]:
        """Environment variables that point a child process's huggingface_hub at this server."""
        return {"HF_ENDPOINT": self.url, "HF_HUB_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "0",
                "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1", "HF_HUB_ETAG_TIMEOUT": "30",
                "HF_HUB_DOWNLOAD_TIMEOUT": "30"}

    @contextlib.contextmanager
    def in_process(self, cache_dir: os.PathLike | str) -> Iterator["LocalHub"]:
        """Point this process's huggingface_hub at the server (its constants are read at import)."""
        from huggingface_hub import constants, hf_api

        env = self.environment(cache_dir)
        saved_env = {k: os.environ.get(k) for k in env}
        names = ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_CACHE", "HF_HUB_OFFLINE")
        saved = {n: getattr(constants, n) for n in names}
        saved_api = hf_api.api.endpoint
        os.environ.update(env)
        constants.ENDPOINT = self.url
        constants.HUGGINGFACE_CO_URL_TEMPLATE = self.url + "/{repo_id}/resolve/{revision}/{filename}"
        constants.HF_HUB_CACHE = str(cache_dir)
        constants.HF_HUB_OFFLINE = False
        hf_api.api.endpoint = self.url
        try:
            yield self
        finally:
            for n, v in saved.items():
                setattr(constants, n, v)
            hf_api.api.endpoint = saved_api
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = (
    ("info", re.compile(rf"^/api/models/{_REPO}$")),
    ("info", re.compile(rf"^/api/models/{_REPO}/revision/(?P<rev>.+)$")),
    ("tree", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")),
    ("paths", re.compile(rf"^/api/models/{_REPO}/paths-info/(?P<rev>[^/]+)$")),
    ("resolve", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")),
)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: LocalHub

    def log_message(self, format, *args):  # quiet: the hub keeps its own log
        pass

    # -------------------------------------------------------------- plumbing

    def _route(self):
        url = urlsplit(self.path)
        for kind, pattern in _ROUTES:
            m = pattern.match(url.path)
            if m:
                groups = {k: unquote(v) if v is not None else None for k, v in m.groupdict().items()}
                return kind, groups, parse_qs(url.query)
        return None, {}, {}

    def _send(self, status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        sent = 0
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            sent = len(body)
        self.hub._record(Request(self.command, urlsplit(self.path).path, status, sent))

    def _json(self, data, status: int = 200, headers: Optional[Dict[str, str]] = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _error(self, status: int, code: str, message: str) -> None:
        self._json({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message})

    def _commit(self, groups) -> Optional[Tuple[Repo, Commit]]:
        repo = self.hub.repos.get(groups["repo"])
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {groups['repo']} not found")
            return None
        commit = repo.resolve(groups.get("rev") or "main")
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {groups.get('rev')}")
            return None
        return repo, commit

    # -------------------------------------------------------------- verbs

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(length) if length else b""
        self._dispatch()

    def _dispatch(self) -> None:
        kind, groups, query = self._route()
        if kind is None:
            self._error(404, "NotFound", f"no such endpoint {self.path}")
            return
        found = self._commit(groups)
        if found is None:
            return
        repo, commit = found
        getattr(self, f"_{kind}")(repo, commit, groups, query)

    def _info(self, repo: Repo, commit: Commit, groups, query) -> None:
        self._json({
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.sha,
            "private": False, "disabled": False, "gated": False, "downloads": 0, "likes": 0,
            "tags": [], "library_name": "transformers",
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        })

    @staticmethod
    def _entry(f: RepoFile) -> dict:
        entry = {"type": "file", "oid": f.git_oid, "size": f.size, "path": f.path}
        if f.lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
        return entry

    def _tree(self, repo: Repo, commit: Commit, groups, query) -> None:
        base = (groups.get("path") or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries, dirs = [], set()
        for path, f in sorted(commit.files.items()):
            if base and not path.startswith(base + "/"):
                continue
            rest = path[len(base) + 1:] if base else path
            if "/" in rest and not recursive:
                dirs.add((base + "/" if base else "") + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    dirs.add((base + "/" if base else "") + "/".join(parts[:i]))
            entries.append(self._entry(f))
        if base and not entries and not dirs:
            self._error(404, "EntryNotFound", f"{base} does not exist on {groups.get('rev')}")
            return
        listing = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)]
        self._json(listing + entries)

    def _paths(self, repo: Repo, commit: Commit, groups, query) -> None:
        body = getattr(self, "_body", b"").decode()
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = json.loads(body or "{}").get("paths", [])
        else:
            paths = parse_qs(body).get("paths", [])
        out = []
        for p in paths:
            p = p.strip("/")
            if p in commit.files:
                out.append(self._entry(commit.files[p]))
            elif any(f.startswith(p + "/") for f in commit.files):
                out.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": p})
        self._json(out)

    def _resolve(self, repo: Repo, commit: Commit, groups, query) -> None:
        f = commit.files.get(groups["path"])
        if f is None:
            self._error(404, "EntryNotFound", f"{groups['path']} does not exist on {groups['rev']}")
            return
        etag = f'"{f.sha256 if f.lfs else f.git_oid}"'
        headers = {"ETag": etag, "X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(f.size)})
        begin, end, status = 0, f.size, 200
        wanted = self.headers.get("Range")
        if wanted:
            m = _RANGE.match(wanted.strip())
            if not m or (not m.group(1) and not m.group(2)):
                self._error(416, "RangeNotSatisfiable", f"bad range {wanted}")
                return
            if m.group(1):
                begin = int(m.group(1))
                end = min(int(m.group(2)) + 1, f.size) if m.group(2) else f.size
            else:  # suffix range: the last N bytes
                begin = max(f.size - int(m.group(2)), 0)
            if begin >= f.size or begin >= end:
                self._error(416, "RangeNotSatisfiable", f"range {wanted} outside {f.size} bytes")
                return
            status = 206
            if self.hub._fault("short", urlsplit(self.path).path, end - begin):
                end = begin + max((end - begin) // 2, 0)
            headers["Content-Range"] = f"bytes {begin}-{end - 1}/{f.size}"
        length = end - begin
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        sent = 0
        if self.command == "GET":
            halfway = self.hub._fault("halfway", urlsplit(self.path).path, length)
            stop = begin + length // 2 if halfway else end
            with open(f.local, "rb") as fh:
                fh.seek(begin)
                pos = begin
                try:
                    while pos < stop:
                        chunk = fh.read(min(_CHUNK, stop - pos))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        pos += len(chunk)
                        sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            if stop < end:
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)
        self.hub._record(Request(self.command, urlsplit(self.path).path, status, sent, wanted))


__all__ = ["LocalHub", "Request", "LFS_THRESHOLD", "shard_model"]


def shard_model(src: os.PathLike | str, dst: os.PathLike | str, shard_bytes: int) -> Path:
    """A copy of a model folder with its weights split into HF-style shards of about ``shard_bytes``."""
    import shutil

    from mergekit_transplant.checkpoint import read_index
    from mergekit_transplant.checkpoint.tensor_io import write_tensor_folder

    src, dst = Path(src), Path(dst)
    index = read_index(str(src))
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and not path.name.startswith("model.safetensors") and not path.name.endswith(".safetensors"):
            shutil.copy2(path, dst / path.name)
    entries = sorted(index.tensors.values(), key=lambda t: (t.file, t.begin))
    write_tensor_folder(dst, entries, max_shard_bytes=shard_bytes)
    return dst
