"""Helpers every benchmark in scripts/bench/ shares: the command line, a data dir with the
models, starting ``python -m appliance ...`` children, percentiles and tables, how busy the
machine is and what it is, and recording into docs/benchmarks.md.

A script run as ``python scripts/bench/NAME.py`` has scripts/bench/ on ``sys.path`` and
imports this module as ``common``; importing it puts the checkout on ``sys.path`` too, so
that ``appliance`` imports work without an installed package.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from appliance.cli import initialise  # noqa: E402
from appliance.config import Settings  # noqa: E402
from appliance.inference import models  # noqa: E402
from appliance.inference.base import gpu_offload_supported, physical_cores  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
DOC_HEADER = """# Benchmarks

Each section below is produced by a script in `scripts/bench/` (run it with `--record` to
append a new section; older sections stay for comparison). Numbers are medians over the
script's runs. Ratios and overheads are against a baseline measured in the same process,
interleaved with the measured path, because the benchmark machine is shared and noisy:
compare ratios across sections, not absolute numbers from different machines or days.
"""
#: Other processes' share of the CPUs above which a run is flagged noisy.
NOISY_SHARE = 0.05


# -- command line and data dir ---------------------------------------------------------------


def bench_parser(doc: str, *, data_dir: bool = False, record: bool = True, wait_idle: bool = False):
    """An ``ArgumentParser`` described by the first paragraph of the script's docstring,
    with ``--data-dir``, ``--record`` and ``--wait-idle`` where the script takes them."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if wait_idle:
        parser.add_argument(
            "--wait-idle",
            type=float,
            default=0,
            metavar="SECONDS",
            help="first wait up to SECONDS for other processes to leave the CPUs (shared boxes)",
        )
    if data_dir:
        parser.add_argument(
            "--data-dir",
            type=Path,
            help="data dir with the models installed (default: a temporary one, set up here)",
        )
    if record:
        parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    return parser


def bench_args(doc: str, **sizes: int) -> argparse.Namespace:
    """The command line of a script that takes ``--record`` and whole-number sizes: one
    option per keyword (``files_mb=50`` is ``--files-mb``, 50 unless given)."""
    parser = bench_parser(doc)
    for name, default in sizes.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    return parser.parse_args()


def run_main(main) -> None:
    """Exit with what ``main()`` returns; on Ctrl-C with 130, once its ``finally`` blocks
    have stopped the child services."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


def install_models(settings: Settings) -> None:
    """Install the bundled models into ``settings``' data dir unless they are there."""
    registry = models.load_registry(settings)
    if not (registry.default_chat and registry.default_embedding):
        models.install_defaults(settings, log=lambda message: print(f"  {message}"))


def share_models(settings: Settings, models_data_dir: Path) -> None:
    """Point ``settings``' (empty) models directory at the models of another data dir."""
    if settings.paths.models.is_dir():
        settings.paths.models.rmdir()  # initialise made it empty
    settings.paths.models.symlink_to(
        Settings.load(data_dir=models_data_dir.absolute(), environ={}).paths.models,
        target_is_directory=True,
    )


def kept_data_dir(given: Path | None, name: str) -> Settings:
    """Settings for the data dir given, else for one kept in the temporary directory
    (``appliance-bench-NAME``: later runs reuse its models); with the bundled models."""
    data_dir = given or Path(tempfile.gettempdir()) / f"appliance-bench-{name}"
    settings = Settings.load(data_dir=data_dir, environ={})
    install_models(settings)
    return settings


def fresh_settings(name: str) -> Settings:
    """Settings for a new, initialised data dir ``data`` in a new temporary directory
    ``bench-NAME-*`` (left for the script to use and remove)."""
    root = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    settings = Settings.load(data_dir=root / "data", environ={})
    initialise(settings)
    return settings


def models_settings(given: Path | None, scratch: Path, overrides: dict | None = None) -> Settings:
    """Settings (with ``overrides``) for the data dir given, whose models are installed,
    else for a new one in ``scratch`` that gets the bundled models here."""
    if given:
        return Settings.load(
            data_dir=given.expanduser().absolute(), environ={}, overrides=overrides
        )
    settings = Settings.load(data_dir=scratch / "models", environ={}, overrides=overrides)
    print(f"data dir {settings.paths.data_dir} (temporary: installing the models)")
    initialise(settings)
    install_models(settings)
    return settings


def prepare_data_dir(data_dir: Path) -> Settings:
    """Settings for ``data_dir``, initialised (once) and with the bundled models."""
    settings = Settings.load(data_dir=data_dir, environ={})
    if not (settings.paths.secrets / "inference_key").exists():
        initialise(settings)
    install_models(settings)
    return settings


def bench_data_dir(stack: contextlib.ExitStack, given: Path | None) -> Settings:
    """The data dir given on the command line, else a temporary one that ``stack`` removes
    when it closes; initialised, with the bundled models."""
    if given:
        data_dir = given.expanduser().absolute()
        print(f"data dir {data_dir}")
    else:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        print(f"data dir {data_dir} (temporary: installing the models)")
    return prepare_data_dir(data_dir)


# -- numbers and tables ----------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """The ``pct``-th percentile (0-100), interpolated between the nearest ranks; NaN when
    there are no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * pct / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def text_table(header: list[str], rows: list[list]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def own_cpu_seconds() -> float:
    """CPU-seconds of this process and its reaped children (a service, once stopped)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def process_cpu_seconds(pid: int) -> float:
    """CPU-seconds process ``pid`` has run so far, every thread (``schedstat``: exact,
    where ``/proc/PID/stat`` counts in clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


class OthersLoad:
    """Started now: how long ago, and what share of all CPUs other processes have used
    since (beyond this process and its reaped children, e.g. a stopped service)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self._machine = cpu_busy_seconds()
        self._own = own_cpu_seconds()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def share(self) -> float:
        others = (cpu_busy_seconds() - self._machine) - (own_cpu_seconds() - self._own)
        return max(0.0, others) / (self.elapsed() * (os.cpu_count() or 1))


def cpu_busy_seconds() -> float:
    """CPU-seconds the whole machine spent busy since boot (all CPUs; steal counts as busy)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def busy_fraction(seconds: float = 2.0) -> float:
    """Share of all CPUs busy over ``seconds``, as a fraction (this process is idle meanwhile)."""
    before = cpu_busy_seconds()
    time.sleep(seconds)
    return (cpu_busy_seconds() - before) / (seconds * (os.cpu_count() or 1))


def wait_until_idle(limit: float, threshold: float = 0.15) -> float:
    """Wait up to ``limit`` seconds for other processes to use under ``threshold`` of the
    CPUs (llama.cpp's threads spin on barriers: a busy neighbour slows them many times);
    returns the last share measured."""
    deadline = time.monotonic() + limit
    busy = busy_fraction(1.0)
    while busy > threshold and time.monotonic() < deadline:
        print(f"  machine {busy:.0%} busy; waiting for it to calm down")
        busy = busy_fraction(5.0)
    return busy


def busy_at_start(args: argparse.Namespace) -> float:
    """Share of the CPUs busy before the run: after waiting ``--wait-idle`` seconds at most
    for other processes to calm down, if it was given."""
    return wait_until_idle(args.wait_idle) if args.wait_idle > 0 else busy_fraction(1.0)


def flag_noise(notes: list[str], busy_before: float, others_share: float) -> None:
    """Warn (and put the warning first in ``notes``) when other processes used more than
    ``NOISY_SHARE`` of the CPUs just before or during the run."""
    if max(busy_before, others_share) > NOISY_SHARE:
        warning = (
            f"Other processes used {others_share:.0%} of the CPUs during this run "
            f"({busy_before:.0%} just before it): these numbers are noisier than usual."
        )
        print(f"\nwarning: {warning}")
        notes.insert(0, f"**{warning}**")


# -- the machine and the code ----------------------------------------------------------------


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what ``platform`` knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def code_version(checkout: Path = ROOT) -> str:
    """The checkout's commit, and whether it has local changes (read-only git calls)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=checkout, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit}" + (" with uncommitted changes" if dirty else "")


def machine_info() -> dict[str, str]:
    import llama_cpp

    return {
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()} logical, {physical_cores()} physical",
        "python": platform.python_version(),
        "llama_cpp": llama_cpp.__version__,
        "gpu_offload": "yes" if gpu_offload_supported() else "no",
        "commit": code_version(),
    }


def date_code_machine(date: str, machine: dict[str, str]) -> list[list[str]]:
    """The first rows of a setup table: the date, the code and ``machine_info()``."""
    return [
        ["Date", date],
        ["Code", code_version()],
        ["Machine", f"{machine['cpu']}, {machine['cores']} cores, Python {machine['python']}"],
    ]


def run_stamp() -> str:
    """When, on which code and on what machine: the first line of a recorded section."""
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, code {code_version()}, {cpu_model()}, "
        f"{os.cpu_count()} logical cores, Python {platform.python_version()}"
    )


def print_and_record(record: bool, *blocks: str) -> None:
    """Print the section's ``blocks``; append them to docs/benchmarks.md if ``record``."""
    print("\n\n".join(block for block in blocks if block))
    if record:
        append_to_doc(*blocks)


def report_comparison(record: bool, section: str, header: list[str], rows, notes: str) -> None:
    """Print the comparison table and ``notes``; with ``record``, append them to
    docs/benchmarks.md under ``section`` (the notes first, the table in Markdown)."""
    print()
    print(text_table(header, rows))
    print(notes)
    if record:
        append_to_doc(section, notes, markdown_table(header, rows))


def date_and_machine() -> list[list[str]]:
    """The first rows of a setup table, taken at the end of a run."""
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    return [
        ["Date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")],
        ["Machine", f"{cpu_model()}, {os.cpu_count()} CPUs; load average at the end {load}"],
    ]


def append_to_doc(*blocks: str) -> None:
    """Append a section to docs/benchmarks.md (started with its header if missing): the
    non-empty ``blocks`` (a heading, a paragraph, a table) separated by blank lines."""
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else DOC_HEADER
    section = "\n\n".join(block for block in blocks if block)
    DOC.write_text(text.rstrip("\n") + "\n\n" + section + "\n", encoding="utf-8")
    print(f"\nappended to {DOC.relative_to(ROOT)}")


def print_tables(tables: list[tuple[str, list[str], list[list]]]) -> None:
    """Each (caption, header, rows) table as text, under its caption."""
    for caption, header, rows in tables:
        print(f"\n{caption}\n" if caption else "")
        print(text_table(header, rows))


def record_tables(
    title: str, setup: list[list], tables: list[tuple[str, list[str], list[list]]], notes=()
) -> None:
    """Append a section: ``title``, the setup table, each (caption, header, rows) table
    under its caption, and the notes."""
    captioned = (
        f"{caption}\n\n{markdown_table(header, rows)}" if caption else markdown_table(header, rows)
        for caption, header, rows in tables
    )
    append_to_doc(title, setup_table(setup), *captioned, notes_block(notes) if notes else "")


def report_tables(record: bool, title: str, setup: list[list], tables, notes=()) -> None:
    """Print the tables; with ``record``, append them as a section (``record_tables``)."""
    print_tables(tables)
    if record:
        record_tables(title, setup, tables, notes)


def setup_table(rows: list[list]) -> str:
    return markdown_table(["Setup", ""], rows)


def notes_block(notes: list[str]) -> str:
    return "Notes:\n\n" + "\n".join(f"- {note}" for note in notes)


# -- child services --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    """A running ``python -m appliance ...`` child (inference or web)."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def stop(self, timeout: float = 15) -> None:
        """SIGINT (the services' clean stop), then SIGKILL after ``timeout`` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def start_appliance(
    data_dir: Path,
    command: list[str],
    *,
    port: int,
    ready: str = "/healthz",
    limit: float = 120,
    checkout: Path = ROOT,
    **extra_env: str,
) -> Service:
    """``python -m appliance COMMAND`` on ``data_dir`` (no APPLIANCE_* variables of ours
    leak in), its output in a log file in the data dir; returns once ``ready`` answers 200
    on ``port``, raises with the log's tail if it exits or is not ready within ``limit``
    seconds. ``checkout``: the source tree it runs from (another commit's, to compare)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(APPLIANCE_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", **extra_env)
    log_path = data_dir / f"bench-{command[0]}-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", *command],
            env=env,
            cwd=checkout,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches us; we stop the child ourselves
        )
    service = Service(process, f"http://127.0.0.1:{port}", log_path)
    name = f"appliance {command[0]}"
    try:
        deadline = time.monotonic() + limit
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited early:\n{service.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(service.url + ready, timeout=2).status_code == 200:
                    return service
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not get ready:\n{service.log_tail()}")
            time.sleep(0.2)
    except BaseException:
        service.stop()
        raise


def start_inference(settings: Settings, **extra_env: str) -> Service:
    """The inference service on ``settings``' data dir, on a free port."""
    port = free_port()
    return start_appliance(
        settings.paths.data_dir,
        ["inference"],
        port=port,
        APPLIANCE_INFERENCE__PORT=str(port),
        **extra_env,
    )


def start_web(data_dir: Path, checkout: Path = ROOT, **extra_env: str) -> Service:
    """The web service on ``data_dir``, on a free port (``extra_env``: APPLIANCE_* settings),
    from ``checkout``'s source tree."""
    port = free_port()
    command = ["web", "--port", str(port)]
    return start_appliance(data_dir, command, port=port, checkout=checkout, **extra_env)


def start_up(data_dir: Path) -> Service:
    """``appliance up`` (web, worker, inference) on ``data_dir``, set up here with the
    bundled models, the web and the inference service on free ports."""
    prepare_data_dir(data_dir)
    port = free_port()
    return start_appliance(
        data_dir,
        ["up", "--port", str(port)],
        port=port,
        ready="/readyz",
        limit=180,
        APPLIANCE_INFERENCE__PORT=str(free_port()),
    )
