"""llama.cpp's own ``llama-server``, the peer the inference service is measured against.

Built once from the llama.cpp source vendored in the installed llama-cpp-python's sdist
(same commit as the library the appliance loads), with the CPU flags scripts/llama-build.sh
gives the wheel (``-DGGML_NATIVE=ON``; ``-DGGML_CUDA=ON`` on top when the installed build is a
CUDA one), only the ``llama-server`` target. Cached under ``scripts/bench/.llama-server/``
(gitignored), keyed by the version and the flags; never a product dependency.

    .venv/bin/python scripts/bench/llama_server.py   # build (or find) it and print its path
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import common

CACHE = Path(__file__).resolve().parent / ".llama-server"


def installed_version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


def cmake_args() -> list[str]:
    """The flags scripts/llama-build.sh builds the wheel with, for this machine."""
    mode = "--cuda" if _installed_is_cuda() else "--cpu"
    printed = subprocess.run(
        [str(common.ROOT / "scripts" / "llama-build.sh"), "--print-args", mode],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [*printed, "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]


def _installed_is_cuda() -> bool:
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    return any(lib.glob("libggml-cuda*"))


def _sdist(version: str) -> Path:
    """The sdist of ``version``: a cached one, else pip downloads it (PyPI)."""
    found = sorted(CACHE.glob(f"llama_cpp_python-{version}.tar.gz"))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"llama-cpp-python=={version}",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(CACHE),
        ],
        check=True,
    )
    return CACHE / f"llama_cpp_python-{version}.tar.gz"


def build(jobs: int = 2) -> Path:
    """Path of a ``llama-server`` built from the installed version's sources (built on the
    first call: minutes; ``nice``d so neighbours keep their share)."""
    version = installed_version()
    args = cmake_args()
    key = hashlib.sha256(" ".join([version, *args]).encode()).hexdigest()[:10]
    out = CACHE / f"{version}-{key}"
    binary = out / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    source = out / "src"
    if not source.exists():
        with tarfile.open(_sdist(version)) as tar:
            prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for member in members:
                member.name = member.name[len(prefix) :]
            tar.extractall(source, members=members, filter="data")
    nice = ["nice", "-n", "15"]
    subprocess.run(
        [
            *nice,
            "cmake",
            "-S",
            str(source),
            "-B",
            str(out / "build"),
            "-DCMAKE_BUILD_TYPE=Release",
            *args,
        ],
        check=True,
    )
    subprocess.run(
        [
            *nice,
            "cmake",
            "--build",
            str(out / "build"),
            "--target",
            "llama-server",
            "-j",
            str(jobs),
        ],
        check=True,
    )
    return binary


@dataclass
class LlamaServer:
    process: subprocess.Popen
    url: str
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    model: Path,
    *,
    n_ctx: int,
    slots: int,
    threads: int,
    repack: bool,
    log_path: Path,
    batch: int | None = None,
) -> LlamaServer:
    """Start ``llama-server`` on ``model`` with the inference service's settings: ``n_ctx``
    is the whole KV cache (llama-server splits it across ``slots`` like the batched engine
    shares it), ``threads`` for decode and batch, weights repacked only if ``repack``."""
    port = common.free_port()
    command = [
        str(build()),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-c",
        str(n_ctx),
        "-np",
        str(slots),
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "--kv-unified",
        "--jinja",
    ]
    if batch:
        command += ["-b", str(batch)]
    if not repack:
        command.append("--no-repack")
    log = log_path.open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = LlamaServer(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama-server exited: {log_path.read_text()[-2000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{server.url}/health", timeout=2) as response,
        ):
            if response.status == 200:
                return server
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"llama-server did not become healthy: {log_path.read_text()[-2000:]}")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    print(build(jobs=int(os.environ.get("JOBS", "2"))))
