"""The model catalog (``catalog.toml`` beside this module, plus the operator's own entries
in ``DATA_DIR/models/catalog.toml``) and ``appliance models recommend``.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Settings
from appliance.errors import ConfigError, NotFound
from appliance.inference.models import ID_RE, SHA256_RE, Kind

BUNDLED = Path(__file__).with_name("catalog.toml")
EXTRA_FILE = "catalog.toml"  # in the models directory
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
GB = 1_000_000_000

#: RAM kept for everything but the chat model on a CPU server: the web and worker
#: processes, the embedding model, the operating system.
CPU_RESERVE_GB = 2.0
#: The largest model (billions of parameters) worth running on this many physical cores:
#: generation on a CPU is bound by memory bandwidth, which grows with the core count of
#: the servers that have it; past these sizes answers come slower than people read.
CPU_CLASSES = ((16, 15.0), (8, 8.5), (4, 3.5), (0, 1.5))


@dataclass(frozen=True)
class Entry:
    name: str
    kind: Kind
    repo: str
    file: str
    revision: str
    sha256: str  # "" when only the hub's metadata verifies the file
    size_bytes: int
    params_b: float
    context_length: int
    memory_gb: float
    license: str
    page: str

    @property
    def spec(self) -> str:
        return f"hf:{self.repo}/{self.file}@{self.revision}"


def read_bundled() -> dict[str, Entry]:
    return _read(BUNDLED)


def load(settings: Settings) -> dict[str, Entry]:
    """The bundled catalog with the data dir's entries added (a same name replaces one)."""
    entries = _read(BUNDLED)
    extra = settings.paths.models / EXTRA_FILE
    if extra.exists():
        entries.update(_read(extra))
    return entries


def get(settings: Settings, name: str) -> Entry:
    try:
        return load(settings)[name]
    except KeyError:
        raise NotFound(
            f"'{name}' is not in the model catalog (see `appliance models list --catalog`)"
        ) from None


def _read(path: Path) -> dict[str, Entry]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the model catalog {path}: {exc}") from None
    return {name: _entry(path, name, raw) for name, raw in data.get("models", {}).items()}


def _entry(path: Path, name: str, raw: dict) -> Entry:
    def fail(problem: str) -> ConfigError:
        return ConfigError(f"{path}: model '{name}': {problem}")

    if not ID_RE.match(name):
        raise fail("the name may use only a-z, 0-9, '.', '_' and '-'")
    fields = {key: raw.get(key) for key in ("kind", "repo", "file", "license")}
    missing = [key for key, value in fields.items() if not isinstance(value, str) or not value]
    if missing:
        raise fail(f"missing {', '.join(missing)}")
    if fields["kind"] not in ("chat", "embedding"):
        raise fail("kind must be 'chat' or 'embedding'")
    if not REPO_RE.match(fields["repo"]):
        raise fail("repo must be OWNER/NAME")
    if not fields["file"].endswith(".gguf") or ".." in fields["file"].split("/"):
        raise fail("file must be a .gguf path inside the repository")
    sha256 = str(raw.get("sha256", "")).lower()
    if sha256 and not SHA256_RE.match(sha256):
        raise fail("sha256 must be 64 hexadecimal characters")
    try:
        return Entry(
            name=name,
            **fields,
            revision=str(raw.get("revision") or "main"),
            sha256=sha256,
            size_bytes=int(raw.get("size_bytes", 0)),
            params_b=float(raw.get("params_b", 0)),
            context_length=int(raw.get("context_length", 0)),
            memory_gb=float(raw["memory_gb"]),
            page=str(raw.get("page", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"bad or missing number: {exc}") from None


# -- recommend ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """What ``recommend`` weighs: the GPUs as ``gpu.memory()`` reports them (None on a
    server without an NVIDIA driver), the RAM available now and the physical cores."""

    gpus: list[dict] | None
    ram_available_bytes: int
    cpu_cores: int


def this_machine() -> Machine:
    from appliance.inference import gpu
    from appliance.inference.base import physical_cores

    return Machine(
        gpus=gpu.memory(), ram_available_bytes=_ram_available(), cpu_cores=physical_cores()
    )


def recommend(entries: dict[str, Entry], machine: Machine) -> tuple[Entry | None, str]:
    """The largest catalog chat model this machine runs well, and why (with the numbers).

    With an NVIDIA GPU: the one that fits the GPU with the most free memory. Without: the
    one that fits the available RAM less a reserve and the size class of the CPU cores.
    None when nothing fits (the bundled tiny model stays).
    """
    chat = sorted(
        (e for e in entries.values() if e.kind == "chat"),
        key=lambda e: (e.params_b, e.memory_gb),
    )
    if not chat:
        return None, "the catalog has no chat model"
    if machine.gpus:
        best = max(machine.gpus, key=lambda g: g["memory_total_mb"] - g["memory_used_mb"])
        free_gb = (best["memory_total_mb"] - best["memory_used_mb"]) * 1024**2 / GB
        where = f"GPU {best['index']} ({best['name']}) has {free_gb:.1f} GB of memory free"
        fitting = [e for e in chat if e.memory_gb <= free_gb]
    else:
        budget = machine.ram_available_bytes / GB - CPU_RESERVE_GB
        limit = next(size for cores, size in CPU_CLASSES if machine.cpu_cores >= cores)
        where = (
            f"no NVIDIA GPU: {machine.ram_available_bytes / GB:.1f} GB of RAM available "
            f"({budget:.1f} GB after {CPU_RESERVE_GB:.0f} GB for the other services) and "
            f"{machine.cpu_cores} physical cores (up to {limit:g}B parameters answer at a "
            "readable speed on that many)"
        )
        fitting = [e for e in chat if e.memory_gb <= budget and e.params_b <= limit]
    if not fitting:
        smallest = chat[0]
        return None, (
            f"{where}; the smallest catalog chat model, {smallest.name}, needs "
            f"{smallest.memory_gb:g} GB{'' if machine.gpus else ' and ' + _cores_for(smallest)}"
            ": keep the bundled tiny model"
        )
    choice = fitting[-1]
    return choice, (
        f"{where}; {choice.name} ({choice.params_b:g}B parameters, {choice.license}) needs "
        f"about {choice.memory_gb:g} GB (a {choice.size_bytes / GB:.2f} GB file, the KV cache "
        "for 8192 tokens and buffers): the largest chat model in the catalog that fits"
    )


def _cores_for(entry: Entry) -> str:
    cores = min(c for c, size in CPU_CLASSES if entry.params_b <= size)
    return f"{max(cores, 1)}+ cores"


def _ram_available() -> int:
    """MemAvailable from /proc/meminfo (free memory plus what the kernel can reclaim)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
