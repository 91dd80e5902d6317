"""The model registry (``appliance.inference.models``) and ``appliance models pull``.

Pulls go to a real HTTP server on 127.0.0.1 (``http.server`` with the Range support
written here), serving the bundled embedding GGUF and a small GGUF written here with the
``gguf`` package (so most tests do not hash and parse 90 MB).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import make_settings
from gguf import GGUFEndian, GGUFReader, GGUFValueType, GGUFWriter
from hub_standin import write_gguf

from appliance.errors import Conflict, InvalidInput, NotFound
from appliance.inference import models
from appliance.inference.pull import pull

pytestmark = pytest.mark.inference

EMBED_FILE = "all-MiniLM-L6-v2.f16.gguf"
CHAT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def shared_settings(models_dir: Path):
    """Settings whose models directory is the session's shared one."""
    settings = make_settings(models_dir.parent)
    assert settings.paths.models == models_dir
    return settings


def place(source: Path, target: Path) -> Path:
    """Put ``source`` at ``target`` without copying 90 MB when a hard link will do."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    """A valid 4 MB GGUF (BERT architecture, context length 384, one tensor)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return write_gguf(path, "bert", 384, (1000, 1000), seed=0, name="tiny test model")


# -- the registry --------------------------------------------------------------------


def test_install_defaults_registered_both_bundled_models(models_dir):
    settings = shared_settings(models_dir)
    registry = models.load_registry(settings)

    assert set(registry.models) == {models.DEFAULT_CHAT, models.DEFAULT_EMBEDDING}
    assert registry.default_chat == models.DEFAULT_CHAT
    assert registry.default_embedding == models.DEFAULT_EMBEDDING
    chat = registry.resolve("chat")
    embedding = registry.resolve("embedding")
    assert (chat.id, chat.kind, chat.file) == (models.DEFAULT_CHAT, "chat", CHAT_FILE)
    assert (embedding.id, embedding.kind, embedding.file) == (
        models.DEFAULT_EMBEDDING,
        "embedding",
        EMBED_FILE,
    )
    assert chat.context_length == 8192  # SmolLM2's trained context
    assert embedding.context_length == 512  # BERT's max_position_embeddings
    for model in (chat, embedding):
        path = registry.path(model)
        assert path.is_file()
        assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert models.verify(settings, model)
        assert model.license.startswith("Apache-2.0")
    # The registry on disk is plain JSON with the same content.
    on_disk = json.loads((models_dir / models.REGISTRY_FILE).read_text())
    assert on_disk["default_chat"] == models.DEFAULT_CHAT
    assert on_disk["models"][models.DEFAULT_EMBEDDING]["sha256"] == embedding.sha256
    # No temporary files are left behind by the copy and the conversion.
    leftovers = [p.name for p in models_dir.iterdir() if p.name.endswith(".partial")]
    assert leftovers == []


def test_install_defaults_again_changes_nothing(models_dir):
    settings = shared_settings(models_dir)
    before = (models_dir / models.REGISTRY_FILE).read_text()
    mtimes = {name: (models_dir / name).stat().st_mtime_ns for name in (CHAT_FILE, EMBED_FILE)}

    assert models.install_defaults(settings, log=lambda message: None) == []

    assert (models_dir / models.REGISTRY_FILE).read_text() == before
    assert {name: (models_dir / name).stat().st_mtime_ns for name in mtimes} == mtimes


def test_install_defaults_replaces_an_older_conversion_of_the_embedding_model(models_dir, tmp_path):
    """An install made before the F16 conversion gets it at its next install-defaults,
    and its F32 file goes (nothing else in the registry names it)."""
    settings = make_settings(tmp_path)
    place(models_dir / CHAT_FILE, settings.paths.models / CHAT_FILE)
    old = place(models_dir / EMBED_FILE, settings.paths.models / "all-MiniLM-L6-v2.f32.gguf")
    registry = models.load_registry(settings)
    models.register(
        registry,
        models.DEFAULT_CHAT,
        settings.paths.models / CHAT_FILE,
        kind="chat",
        license="Apache-2.0",
        source="test",
    )
    models.register(
        registry,
        models.DEFAULT_EMBEDDING,
        old,
        kind="embedding",
        license="Apache-2.0",
        source="test",
    )

    installed = models.install_defaults(settings, log=lambda message: None)

    assert [m.id for m in installed] == [models.DEFAULT_EMBEDDING]
    assert models.load_registry(settings).resolve("embedding").file == EMBED_FILE
    assert not old.exists()
    assert sorted(p.name for p in settings.paths.models.glob("*.gguf")) == [CHAT_FILE, EMBED_FILE]


def test_resolve_refuses_a_model_of_the_wrong_kind(models_dir):
    registry = models.load_registry(shared_settings(models_dir))
    with pytest.raises(InvalidInput, match="embedding model, not a chat model"):
        registry.resolve("chat", models.DEFAULT_EMBEDDING)
    with pytest.raises(NotFound, match="no model 'nope'"):
        registry.resolve("chat", "nope")


@pytest.fixture
def two_embedders(tmp_path, tiny_gguf):
    """A fresh data dir with two registered embedding models: 'first' (default), 'second'."""
    settings = make_settings(tmp_path / "data")
    registry = models.load_registry(settings)
    source = tiny_gguf
    for name in ("first", "second"):
        models.register(
            registry,
            name,
            place(source, settings.paths.models / f"{name}.gguf"),
            kind="embedding",
            license="test",
            source="test",
        )
    return settings


def test_the_first_model_of_a_kind_becomes_its_default(two_embedders):
    registry = models.load_registry(two_embedders)
    assert registry.default_embedding == "first"
    assert registry.default_chat is None
    assert registry.models["second"].context_length == 384  # read from the file
    with pytest.raises(NotFound, match="install-defaults"):
        registry.default("chat")


def test_set_default(two_embedders):
    model = models.set_default(two_embedders, "second")

    assert model.id == "second"
    registry = models.load_registry(two_embedders)
    assert registry.default_embedding == "second"
    assert registry.resolve("embedding").id == "second"
    with pytest.raises(NotFound):
        models.set_default(two_embedders, "missing")
    assert models.load_registry(two_embedders).default_embedding == "second"


def test_remove_refuses_the_default_while_another_model_of_its_kind_exists(two_embedders):
    models_path = two_embedders.paths.models

    with pytest.raises(Conflict, match="set-default second"):
        models.remove(two_embedders, "first")
    registry = models.load_registry(two_embedders)
    assert set(registry.models) == {"first", "second"}
    assert registry.default_embedding == "first"
    assert (models_path / "first.gguf").exists()

    removed = models.remove(two_embedders, "second")  # not the default: allowed
    assert removed.id == "second"
    assert not (models_path / "second.gguf").exists()

    models.remove(two_embedders, "first")  # the last of its kind: allowed
    registry = models.load_registry(two_embedders)
    assert registry.models == {}
    assert registry.default_embedding is None
    assert not (models_path / "first.gguf").exists()
    with pytest.raises(NotFound):
        models.remove(two_embedders, "first")


def test_verify_notices_a_changed_file(two_embedders):
    registry = models.load_registry(two_embedders)
    model = registry.models["second"]
    path = registry.path(model)
    assert models.verify(two_embedders, model)
    path.unlink()  # break the hard link before changing the bytes
    path.write_bytes(b"GGUF" + b"\0" * 64)
    assert not models.verify(two_embedders, model)
    path.unlink()
    assert not models.verify(two_embedders, model)


@pytest.mark.parametrize("endian", [GGUFEndian.LITTLE, GGUFEndian.BIG])
def test_gguf_metadata_is_what_the_gguf_package_reads_without_the_arrays(tmp_path, endian):
    path = tmp_path / "m.gguf"
    writer = GGUFWriter(str(path), "llama", endianess=endian)
    writer.add_name("a test model")
    writer.add_context_length(4096)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_uint64("test.big", 2**40)
    writer.add_int8("test.small", -3)
    writer.add_token_list(["<s>", "héllo", "wörld", ""] * 500)
    writer.add_token_scores([0.5] * 2000)
    writer.add_array("test.nested", [[1, 2], [3]])
    writer.add_string("general.after_the_arrays", "still read")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    metadata = models.gguf_metadata(path)

    reader = GGUFReader(str(path))
    scalars = {
        key: field.contents()
        for key, field in reader.fields.items()
        if not key.startswith("GGUF.") and field.types[0] != GGUFValueType.ARRAY
    }
    assert metadata == pytest.approx(scalars)
    assert metadata["general.after_the_arrays"] == "still read"
    assert metadata["test.big"] == 2**40 and metadata["test.small"] == -3
    assert "tokenizer.ggml.tokens" not in metadata
    assert models.gguf_context_length(path) == 4096


def test_a_file_that_is_not_a_whole_gguf_v2_or_v3_header_is_invalid_input(models_dir, tmp_path):
    real = (models_dir / CHAT_FILE).read_bytes()[:4_000_000]
    files = {
        "empty": b"",
        "text": b"this is not a GGUF file\n" * 100,
        "version 1": b"GGUF" + (1).to_bytes(4, "little") + real[8:],
        "cut inside the vocabulary": real[:300_000],
        "cut inside the header": real[:20],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InvalidInput, match="is not a GGUF model file"):
            models.gguf_metadata(tmp_path / name)
    (tmp_path / "whole header").write_bytes(real)  # the tensors' data are not read
    assert models.gguf_context_length(tmp_path / "whole header") == 8192


# -- pull ----------------------------------------------------------------------------


@dataclass
class FileServer:
    """A tiny static HTTP server with ``Range: bytes=N-`` support."""

    files: dict[str, bytes]
    url: str = ""
    requests: list[dict[str, str]] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    honour_range: bool = True


def _handler(state: FileServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            state.requests.append({"path": self.path, **dict(self.headers.items())})
            data = state.files.get(self.path)
            if data is None:
                self._reply(404, b"not found", {})
                return
            start = 0
            ranged = self.headers.get("Range")
            if ranged and state.honour_range:
                match = re.fullmatch(r"bytes=(\d+)-", ranged)
                if not match:
                    self._reply(400, b"unsupported range", {})
                    return
                start = int(match.group(1))
                if start >= len(data):
                    self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                body = memoryview(data)[start:]
                end = len(data) - 1
                self._reply(206, body, {"Content-Range": f"bytes {start}-{end}/{len(data)}"})
                return
            self._reply(200, memoryview(data), {"Accept-Ranges": "bytes"})

        def _reply(self, status: int, body, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            for offset in range(0, len(body), 1 << 20):
                self.wfile.write(body[offset : offset + (1 << 20)])
            state.sent.append(len(body))

        def log_message(self, format, *args):  # silence the access log
            pass

    return Handler


@pytest.fixture(scope="module")
def real_bytes(models_dir) -> bytes:
    return (models_dir / EMBED_FILE).read_bytes()


@pytest.fixture(scope="module")
def gguf_bytes(tiny_gguf) -> bytes:
    return tiny_gguf.read_bytes()


@pytest.fixture
def file_server(real_bytes, gguf_bytes) -> Iterator[FileServer]:
    state = FileServer(
        files={
            f"/hf/resolve/main/{EMBED_FILE}": real_bytes,
            "/models/Tiny-Embed.gguf": gguf_bytes,
            "/models/tiny-chat.gguf": gguf_bytes,
            "/models/not-a-model.gguf": b"this is not a GGUF file\n" * 1000,
        }
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def fresh(tmp_path):
    return make_settings(tmp_path / "data")


def test_pull_downloads_verifies_and_registers_the_real_embedding_model(
    fresh, file_server, real_bytes
):
    url = f"{file_server.url}/hf/resolve/main/{EMBED_FILE}"

    model = pull(fresh, url, sha256=sha256_bytes(real_bytes), kind="embedding", progress=False)

    assert model.id == "all-minilm-l6-v2.f16"  # from the file name, lower-cased
    assert model.file == EMBED_FILE
    assert model.kind == "embedding"
    assert model.sha256 == sha256_bytes(real_bytes)
    assert model.context_length == 512
    assert model.source == url
    target = fresh.paths.models / EMBED_FILE
    assert target.read_bytes() == real_bytes
    assert sorted(p.name for p in fresh.paths.models.iterdir()) == [
        EMBED_FILE,
        models.REGISTRY_FILE,
    ]
    registry = models.load_registry(fresh)
    assert registry.models[model.id] == model
    assert registry.default_embedding == model.id  # the first of its kind
    assert registry.default_chat is None
    assert models.verify(fresh, model)
    assert len(file_server.requests) == 1
    assert "Range" not in file_server.requests[0]


def test_pull_registers_a_chat_model_and_makes_it_default_when_asked(
    fresh, file_server, gguf_bytes
):
    digest = sha256_bytes(gguf_bytes)
    first = pull(fresh, f"{file_server.url}/models/tiny-chat.gguf", sha256=digest, progress=False)
    assert (first.id, first.kind) == ("tiny-chat", "chat")
    assert models.load_registry(fresh).default_chat == "tiny-chat"

    second = pull(
        fresh,
        f"{file_server.url}/models/Tiny-Embed.gguf",
        sha256=digest,
        model_id="Second.Chat",
        license="MIT",
        make_default=True,
        progress=False,
    )

    assert (second.id, second.kind, second.license) == ("second.chat", "chat", "MIT")
    assert second.context_length == 384
    registry = models.load_registry(fresh)
    assert registry.default_chat == "second.chat"
    assert set(registry.models) == {"tiny-chat", "second.chat"}


def test_pull_resumes_a_partial_download_with_a_range_request(fresh, file_server, gguf_bytes):
    have = 1_234_567
    partial = fresh.paths.models / "Tiny-Embed.gguf.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(gguf_bytes[:have])

    model = pull(
        fresh,
        f"{file_server.url}/models/Tiny-Embed.gguf",
        sha256=f"  {sha256_bytes(gguf_bytes).upper()}\n",  # case and spaces do not matter
        model_id="resumed",
        kind="embedding",
        progress=False,
    )
    assert model.context_length == 384

    assert [r.get("Range") for r in file_server.requests] == [f"bytes={have}-"]
    assert file_server.sent == [len(gguf_bytes) - have]  # only the rest was sent
    assert (fresh.paths.models / "Tiny-Embed.gguf").read_bytes() == gguf_bytes
    assert not partial.exists()
    assert model.id == "resumed"
    assert model.sha256 == sha256_bytes(gguf_bytes)


def pull_tiny_embed(settings, file_server, sha256: str):
    """``appliance models pull`` of the file server's Tiny-Embed.gguf as an embedding model."""
    return pull(
        settings,
        f"{file_server.url}/models/Tiny-Embed.gguf",
        sha256=sha256,
        kind="embedding",
        progress=False,
    )


def test_pull_finishes_when_the_partial_file_is_already_complete(fresh, file_server, gguf_bytes):
    partial = fresh.paths.models / "Tiny-Embed.gguf.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(gguf_bytes)

    model = pull_tiny_embed(fresh, file_server, sha256_bytes(gguf_bytes))

    assert [r.get("Range") for r in file_server.requests] == [f"bytes={len(gguf_bytes)}-"]
    assert models.verify(fresh, model)
    assert not partial.exists()


def test_pull_starts_over_when_the_server_ignores_the_range(fresh, file_server, gguf_bytes):
    file_server.honour_range = False
    partial = fresh.paths.models / "Tiny-Embed.gguf.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"stale bytes from some other download")

    model = pull_tiny_embed(fresh, file_server, sha256_bytes(gguf_bytes))

    assert file_server.requests[0]["Range"] == "bytes=36-"
    assert file_server.sent == [len(gguf_bytes)]
    assert (fresh.paths.models / "Tiny-Embed.gguf").read_bytes() == gguf_bytes
    assert model.sha256 == sha256_bytes(gguf_bytes)


def test_pull_with_a_checksum_mismatch_deletes_the_download(fresh, file_server, gguf_bytes):
    wrong = sha256_bytes(b"something else")

    with pytest.raises(InvalidInput, match="checksum mismatch") as caught:
        pull_tiny_embed(fresh, file_server, wrong)

    assert wrong in str(caught.value)
    assert sha256_bytes(gguf_bytes) in str(caught.value)
    assert list(fresh.paths.models.iterdir()) == []  # neither the model nor a .partial
    assert models.load_registry(fresh).models == {}


def test_pulling_an_installed_model_again_is_a_conflict(fresh, file_server, gguf_bytes):
    url = f"{file_server.url}/models/Tiny-Embed.gguf"
    digest = sha256_bytes(gguf_bytes)
    pull(fresh, url, sha256=digest, kind="embedding", progress=False)
    requests = len(file_server.requests)

    with pytest.raises(Conflict, match="already installed"):
        pull(fresh, url, sha256=digest, kind="embedding", progress=False)
    # Another id but the same file name would overwrite the installed file.
    with pytest.raises(Conflict, match="already exists"):
        pull(fresh, url, sha256=digest, model_id="other", kind="embedding", progress=False)

    assert len(file_server.requests) == requests  # refused before downloading
    assert set(models.load_registry(fresh).models) == {"tiny-embed"}
    assert (fresh.paths.models / "Tiny-Embed.gguf").read_bytes() == gguf_bytes


@pytest.mark.parametrize(
    ("url", "sha256", "model_id", "message"),
    [
        ("{url}/models/model.bin", "a" * 64, None, r"\.gguf"),
        ("{url}/models/", "a" * 64, None, r"\.gguf"),
        ("ftp://example.com/model.gguf", "a" * 64, None, "http"),
        ("file:///etc/passwd.gguf", "a" * 64, None, "http"),
        ("{url}/models/Tiny-Embed.gguf", "abc123", None, "64 hexadecimal"),
        ("{url}/models/Tiny-Embed.gguf", "g" * 64, None, "64 hexadecimal"),
        ("{url}/models/Tiny-Embed.gguf", "a" * 64, "../escape", "may use only"),
        ("{url}/models/Tiny-Embed.gguf", "a" * 64, "Spaces In Id", "may use only"),
    ],
)
def test_pull_rejects_bad_arguments_before_downloading(
    fresh, file_server, url, sha256, model_id, message
):
    with pytest.raises(InvalidInput, match=message):
        pull(
            fresh,
            url.format(url=file_server.url),
            sha256=sha256,
            model_id=model_id,
            progress=False,
        )
    assert file_server.requests == []
    assert not fresh.paths.models.exists() or list(fresh.paths.models.iterdir()) == []


def test_pull_reports_a_failed_download(fresh, file_server):
    with pytest.raises(InvalidInput, match="HTTP 404"):
        pull(fresh, f"{file_server.url}/models/missing.gguf", sha256="a" * 64, progress=False)
    assert list(fresh.paths.models.iterdir()) == []


def test_pulling_a_file_that_is_not_a_gguf_model_is_invalid_input(fresh, file_server):
    data = file_server.files["/models/not-a-model.gguf"]
    try:
        with pytest.raises(InvalidInput):
            pull(
                fresh,
                f"{file_server.url}/models/not-a-model.gguf",
                sha256=sha256_bytes(data),
                progress=False,
            )
    finally:
        # Whatever the error, nothing is installed.
        assert list(fresh.paths.models.iterdir()) == []
        assert models.load_registry(fresh).models == {}
