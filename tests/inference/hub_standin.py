"""A local stand-in for the Hugging Face hub: the few endpoints ``hf_hub_download`` and
``get_hf_file_metadata`` call, with the hub's headers.

Two HTTP servers on 127.0.0.1, as on the real hub: the hub itself answers
``HEAD``/``GET /{repo}/resolve/{revision}/{file}`` with a redirect to a "CDN" (another
origin) carrying the file's metadata (``X-Repo-Commit``, ``X-Linked-Etag`` with the SHA-256,
``X-Linked-Size``), and the CDN serves the bytes with ``Range`` support. Errors carry the
hub's ``X-Error-Code``. Every request is recorded for the tests' assertions, and faults
are injected on demand: a transfer cut short, a file whose bytes differ from the SHA-256
the hub publishes, a gated repository that needs a token.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import numpy as np
from gguf import GGUFWriter


@dataclass
class Repo:
    commit: str
    files: dict[str, bytes] = field(default_factory=dict)
    published: dict[str, str] = field(default_factory=dict)  # file -> SHA-256 the hub shows
    token: str | None = None  # gated: requests need "Authorization: Bearer <token>"


@dataclass
class Request:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    headers: dict[str, str]


class HubStandIn:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.cut_after: int | None = None  # bytes sent by the next CDN transfer before it drops
        self._servers = [
            ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "hub")),
            ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "cdn")),
        ]
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)
        self._threads = [
            threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True)
            for s in self._servers
        ]

    def add(
        self,
        repo: str,
        file: str,
        data: bytes,
        *,
        commit: str = "",
        published_sha256: str = "",
        token: str | None = None,
    ) -> Repo:
        entry = self.repos.setdefault(
            repo, Repo(commit=commit or hashlib.sha256(repo.encode()).hexdigest()[:40], token=token)
        )
        entry.files[file] = data
        entry.published[file] = published_sha256 or hashlib.sha256(data).hexdigest()
        return entry

    def of(self, server: str, method: str = "") -> list[Request]:
        return [r for r in self.requests if r.server == server and method in ("", r.method)]

    def __enter__(self) -> HubStandIn:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(5)


RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")
CDN = re.compile(r"^/cdn/(?P<repo>[^/]+/[^/]+)/(?P<commit>[0-9a-f]{40})/(?P<file>.+)$")


def _handler(hub: HubStandIn, server: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:
            self._handle(body=False)

        def do_GET(self) -> None:
            self._handle(body=True)

        def _handle(self, body: bool) -> None:
            path = urlsplit(self.path).path
            hub.requests.append(
                Request(server, self.command, path, {k.lower(): v for k, v in self.headers.items()})
            )
            if server == "hub":
                self._resolve(path)
            else:
                self._serve(path, body)

        def _resolve(self, path: str) -> None:
            match = RESOLVE.match(path)
            repo = hub.repos.get(unquote(match["repo"])) if match else None
            if repo is None:
                # The hub answers 401 for a repository that does not exist (or is private).
                self._reply(401, {"X-Error-Code": "RepoNotFound"})
                return
            if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
                self._reply(401, {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"})
                return
            if unquote(match["revision"]) not in ("main", repo.commit):
                self._reply(404, {"X-Error-Code": "RevisionNotFound"})
                return
            file = unquote(match["file"])
            commit = {"X-Repo-Commit": repo.commit}
            if file not in repo.files:
                self._reply(404, {"X-Error-Code": "EntryNotFound", **commit})
                return
            sha256 = repo.published[file]
            location = f"{hub.cdn_url}/cdn/{quote(match['repo'])}/{repo.commit}/{quote(file)}"
            self._reply(
                302,
                {
                    **commit,
                    "Location": location,
                    "X-Linked-Etag": f'"{sha256}"',
                    "X-Linked-Size": str(len(repo.files[file])),
                    "ETag": f'"{sha256}"',
                },
            )

        def _serve(self, path: str, body: bool) -> None:
            match = CDN.match(path)
            repo = hub.repos.get(unquote(match["repo"])) if match else None
            data = repo.files.get(unquote(match["file"])) if repo else None
            if data is None:
                self._reply(404, {})
                return
            start = 0
            ranged = self.headers.get("Range")
            if ranged:
                found = re.fullmatch(r"bytes=(\d+)-", ranged)
                start = int(found.group(1)) if found else 0
                if start >= len(data):
                    self._reply(416, {"Content-Range": f"bytes */{len(data)}"})
                    return
            headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            if ranged:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            payload = memoryview(data)[start:]
            cut, hub.cut_after = hub.cut_after, None
            self.send_response(206 if ranged else 200)
            for name, value in {**headers, "Content-Length": str(len(payload))}.items():
                self.send_header(name, value)
            self.end_headers()
            if not body:
                return
            if cut is not None:
                # The connection drops mid-transfer: the client has fewer bytes than announced.
                self.wfile.write(payload[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            for offset in range(0, len(payload), 1 << 20):
                self.wfile.write(payload[offset : offset + (1 << 20)])

        def _reply(self, status: int, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in {**headers, "Content-Length": "0"}.items():
                self.send_header(name, value)
            self.end_headers()

        def log_message(self, format, *args):  # silence the access log
            pass

    return Handler


def write_gguf(
    path: Path, architecture: str, context_length: int, shape: tuple[int, int], seed: int, **kv
) -> Path:
    """A valid GGUF file at ``path``: one random float32 tensor of ``shape``; ``kv`` sets
    more metadata (``name=...`` calls ``add_name``)."""
    writer = GGUFWriter(str(path), architecture)
    writer.add_context_length(context_length)
    for key, value in kv.items():
        getattr(writer, f"add_{key}")(value)
    weights = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    writer.add_tensor("token_embd.weight", weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
