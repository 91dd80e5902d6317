"""The model self-test: load and run the models in a child process before the service does.

A llama.cpp kernel that this CPU cannot run (an AMX path that faults, a build made with
``-march=native`` on another machine) kills the process that runs it with a signal. The
self-test takes that hit in a child: it loads the chat and embedding models with the
service's settings, evaluates a 16-token prompt, generates 4 tokens and embeds one text.
Its verdict (the child survived, or died by which signal) is remembered in
``DATA_DIR/models/selftest.json`` per machine and llama.cpp build (a fingerprint of the CPU
flags, the llama-cpp-python version and its shared libraries), models and load settings.

``inference.cpu_repack = "auto"`` runs it once with repacking on (the probe) and repacks
only if that child survived. The inference service refuses to start when the verdict for
what it would load is a crash (``choose_repack``); ``appliance doctor``, ``appliance models
self-test``, ``install.sh`` and ``appliance models set-default`` run it afresh (``check``).

The child is ``python -m appliance.inference.selftest_child``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from appliance.config import Settings
from appliance.errors import ConfigError, InvalidInput, NotFound
from appliance.inference import models
from appliance.inference.base import cpuinfo
from appliance.inference.selftest_child import RESULT_PREFIX

log = logging.getLogger(__name__)

VERDICTS_FILE = "selftest.json"
#: Loading a large model from a cold disk and evaluating it on a CPU takes a while.
TIMEOUT_SECONDS = 300.0
#: CPU features whose kernels llama.cpp picks at build or run time (x86, then Arm).
NOTABLE_FLAGS = re.compile(
    r"amx_\w+|avx512\w*|avx_vnni\w*|avx2|fma|f16c|sve\d*|sme\d*|i8mm|asimddp"
)
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "llama-build.sh"


class SelfTestCrashed(ConfigError):
    """The remembered verdict says the models crash this machine with these settings."""


@dataclass(frozen=True)
class ChildResult:
    """How a child process ended."""

    returncode: int | None  # None: killed after the timeout
    seconds: float
    stdout: str
    stderr: str

    @property
    def signal(self) -> str | None:
        """The name of the signal that killed the child (SIGSEGV, SIGILL, ...), if one did."""
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


def run_child(argv: list[str], *, timeout: float = TIMEOUT_SECONDS) -> ChildResult:
    """Run ``argv`` to its end (or ``timeout``) and say how it ended."""
    started = time.monotonic()
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace"
    ) as child:
        try:
            stdout, stderr = child.communicate(timeout=timeout)
            returncode: int | None = child.returncode
        except subprocess.TimeoutExpired:
            child.kill()
            stdout, stderr = child.communicate()
            returncode = None
    return ChildResult(returncode, time.monotonic() - started, stdout, stderr)


@dataclass(frozen=True)
class Verdict:
    """One self-test run: ``outcome`` is "ok", "crashed", "failed" or "timeout"."""

    outcome: str
    repack: bool
    chat_model: str
    embedding_model: str
    seconds: float
    signal: str | None = None
    detail: str = ""
    checked_at: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def crashed(self) -> bool:
        return self.outcome == "crashed"


# -- this machine and build ----------------------------------------------------------------


def cpu_flags() -> list[str]:
    """The CPU's feature flags as the kernel lists them (x86 ``flags``, Arm ``Features``)."""
    for cpu in cpuinfo():
        for key in ("flags", "Features"):
            if key in cpu:
                return cpu[key].split()
    return []


def notable_flags(flags: list[str]) -> list[str]:
    """The flags that decide which llama.cpp CPU kernels run (amx_*, avx512*, avx2, ...)."""
    return [flag for flag in flags if NOTABLE_FLAGS.fullmatch(flag)]


def build_fingerprint() -> str:
    """A hash of this machine's CPU flags and the installed llama.cpp build.

    The build is llama-cpp-python's version and the name, size and modification time of
    each of its shared libraries (a rebuild replaces them); nothing is imported, so a
    library that would fault on this CPU is not loaded here.
    """
    spec = importlib.util.find_spec("llama_cpp")
    libraries: list[tuple[str, int, int]] = []
    if spec is not None and spec.origin:
        lib = Path(spec.origin).parent / "lib"
        if lib.is_dir():
            for path in sorted(lib.iterdir()):
                if path.is_file():
                    stat = path.stat()
                    libraries.append((path.name, stat.st_size, stat.st_mtime_ns))
    try:
        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        version = "missing"
    data = json.dumps([sorted(cpu_flags()), version, libraries])
    return hashlib.sha256(data.encode()).hexdigest()[:16]


# -- verdicts ------------------------------------------------------------------------------


def _plan(
    settings: Settings, chat_model: str = "", embedding_model: str = ""
) -> tuple[models.Registry, models.Model, models.Model]:
    """The registry and the chat and embedding models the service would load."""
    registry = models.load_registry(settings)
    cfg = settings.inference
    chat = registry.resolve("chat", chat_model or cfg.chat_model)
    embedding = registry.resolve("embedding", embedding_model or cfg.embedding_model)
    return registry, chat, embedding


def _key(settings: Settings, chat: models.Model, embedding: models.Model, repack: bool) -> str:
    cfg = settings.inference
    parts = [
        build_fingerprint(),
        chat.sha256,
        embedding.sha256,
        repack,
        cfg.n_gpu_layers,
        cfg.flash_attn,
        cfg.kv_cache_type,
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _verdicts_path(settings: Settings) -> Path:
    return settings.paths.models / VERDICTS_FILE


def _read_verdicts(settings: Settings) -> dict[str, dict]:
    try:
        return json.loads(_verdicts_path(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def remembered(
    settings: Settings, *, repack: bool, chat_model: str = "", embedding_model: str = ""
) -> Verdict | None:
    """The remembered verdict for these models and settings on this machine and build."""
    _, chat, embedding = _plan(settings, chat_model, embedding_model)
    entry = _read_verdicts(settings).get(_key(settings, chat, embedding, repack))
    return Verdict(**entry) if entry else None


def remember(settings: Settings, verdict: Verdict) -> None:
    """Keep a survived-or-crashed verdict (other failures say nothing about the CPU).

    The inference service's unit mounts the models read-only: a verdict it had to find
    for itself (a new llama.cpp build, a changed setting) is used, not kept, and the next
    ``appliance models self-test`` keeps it."""
    if not (verdict.ok or verdict.crashed):
        return
    _, chat, embedding = _plan(settings, verdict.chat_model, verdict.embedding_model)
    verdicts = _read_verdicts(settings)
    verdicts[_key(settings, chat, embedding, verdict.repack)] = asdict(verdict)
    try:
        settings.paths.models.mkdir(parents=True, exist_ok=True)
        models._atomic_write(_verdicts_path(settings), json.dumps(verdicts, indent=2) + "\n")
    except OSError as exc:
        log.warning("self-test verdict %r not kept: %s", verdict.outcome, exc.strerror)


# -- running it ----------------------------------------------------------------------------


def run(
    settings: Settings,
    *,
    repack: bool,
    chat_model: str = "",
    embedding_model: str = "",
    timeout: float = TIMEOUT_SECONDS,
) -> Verdict:
    """Run the self-test child with the service's load settings; remember its verdict.

    Raises:
        NotFound, InvalidInput: a model is not installed or of the wrong kind.
    """
    registry, chat, embedding = _plan(settings, chat_model, embedding_model)
    cfg = settings.inference
    options = {
        "--chat": registry.path(chat),
        "--embedding": registry.path(embedding),
        "--repack": "on" if repack else "off",
        "--n-threads": cfg.n_threads,
        "--n-gpu-layers": cfg.n_gpu_layers,
        "--kv-cache-type": cfg.kv_cache_type,
        "--embedding-max-tokens": cfg.embedding_max_tokens,
    }
    argv = [sys.executable, "-m", "appliance.inference.selftest_child"]
    argv += [str(item) for pair in options.items() for item in pair]
    argv += ["--flash-attn"] if cfg.flash_attn else []
    result = run_child(argv, timeout=timeout)
    verdict = verdict_of(result, repack=repack, chat=chat.id, embedding=embedding.id)
    remember(settings, verdict)
    return verdict


def verdict_of(result: ChildResult, *, repack: bool, chat: str, embedding: str) -> Verdict:
    common = {
        "repack": repack,
        "chat_model": chat,
        "embedding_model": embedding,
        "seconds": round(result.seconds, 2),
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if result.returncode is None:
        return Verdict("timeout", detail=f"no answer in {result.seconds:.0f} s", **common)
    if result.signal:
        return Verdict("crashed", signal=result.signal, detail=_tail(result.stderr), **common)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if result.returncode != 0 or not lines:
        detail = _tail(result.stderr) or f"exit code {result.returncode}"
        return Verdict("failed", detail=detail, **common)
    return Verdict("ok", detail=lines[-1].removeprefix(RESULT_PREFIX), **common)


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def crash_message(verdict: Verdict) -> str:
    """What died, on which CPU features, and what avoids it, in one line for logs and CLI."""
    known = verdict.signal in signal.Signals.__members__
    meaning = signal.strsignal(signal.Signals[verdict.signal]) if known else None
    flags = " ".join(notable_flags(cpu_flags())) or "none reported"
    what = (
        f"the model self-test (chat {verdict.chat_model}, embedding {verdict.embedding_model}, "
        f"CPU repacking {'on' if verdict.repack else 'off'}) died with {verdict.signal}"
        + (f" ({meaning})" if meaning else "")
    )
    fixes = []
    if verdict.repack:
        fixes.append(
            'set inference.cpu_repack = "off" ([inference] in appliance.toml, or '
            "APPLIANCE_INFERENCE__CPU_REPACK=off)"
        )
    fixes.append(
        f"rebuild llama-cpp-python for this CPU: {BUILD_SCRIPT} --rebuild {sys.executable}"
        ' (docs/operations.md, "Building llama.cpp")'
    )
    hint = ""
    if verdict.signal == "SIGILL":
        hint = " An illegal instruction usually means llama.cpp was built on another CPU."
    return (
        f"{what}.{hint} CPU flags that matter on this machine: {flags}. "
        f"What avoids it: {'; or '.join(fixes)}. Then run `appliance doctor` to test again."
    )


def choose(
    settings: Settings, *, chat_model: str = "", embedding_model: str = ""
) -> tuple[bool, str, Verdict | None]:
    """Whether the models load with repacking, why, and the probe if it ran just now.

    ``auto`` runs the probe (the self-test with repacking on) once per machine, build,
    models and settings, and repacks only if it survived.
    """
    mode = settings.inference.cpu_repack
    if mode != "auto":
        return mode == "on", f'inference.cpu_repack = "{mode}"', None
    names = {"chat_model": chat_model, "embedding_model": embedding_model}
    fresh = None
    probe = remembered(settings, repack=True, **names)
    if probe is None:
        log.info("cpu_repack auto: probing CPU repacking in a child process (once)")
        probe = fresh = run(settings, repack=True, **names)
    if probe.ok:
        return True, "auto: the probe with CPU repacking passed", fresh
    if probe.crashed:
        why = f"auto: the probe with CPU repacking died with {probe.signal}, so it is off"
    else:
        why = f"auto: the probe could not run ({probe.outcome}: {probe.detail}), so it is off"
    return False, why, fresh


def check(
    settings: Settings, *, chat_model: str = "", embedding_model: str = ""
) -> tuple[Verdict, str]:
    """Run the self-test now with what the service would load: the verdict and the choice.

    Raises:
        NotFound, InvalidInput: a model is not installed or of the wrong kind.
    """
    repack, why, probe = choose(settings, chat_model=chat_model, embedding_model=embedding_model)
    if probe is not None and probe.repack == repack:
        return probe, why  # the probe that just ran was this very test
    verdict = run(settings, repack=repack, chat_model=chat_model, embedding_model=embedding_model)
    return verdict, why


def choose_repack(settings: Settings) -> bool:
    """What the inference service loads with: the self-test's verdict decides.

    Runs the self-test once for a machine, build, models and settings it has no verdict
    for, so a crash costs a child process, not the service.

    Raises:
        SelfTestCrashed: the verdict for what the service would load is a crash.
        ConfigError: a configured model is not installed.
    """
    try:
        repack, why, _ = choose(settings)
        verdict = remembered(settings, repack=repack)
        if verdict is None:
            log.info("model self-test in a child process (once for this machine and build)")
            verdict = run(settings, repack=repack)
    except (NotFound, InvalidInput) as exc:
        raise ConfigError(str(exc)) from None
    if verdict.crashed:
        raise SelfTestCrashed(crash_message(verdict))
    if not verdict.ok:
        log.warning("model self-test could not run (%s): %s", verdict.outcome, verdict.detail)
    log.info("CPU repacking %s (%s)", "on" if repack else "off", why)
    return repack
