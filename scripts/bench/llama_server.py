"""llama.cpp's own ``llama-server``, the peer the inference service is measured against.

Built from the llama.cpp source vendored in the installed llama-cpp-python's sdist (same
commit as the library the appliance loads), only the ``llama-server`` target, and linked
against the installed wheel's own ggml libraries (``LLAMA_USE_SYSTEM_GGML``, through the
``ggml-config.cmake`` the wheel installs): both servers run the very same ggml binaries,
CPU or CUDA, with the flags scripts/llama-build.sh built them with, and the build compiles
only llama.cpp's C++ (no CUDA kernel a second time; 10 minutes on 2 cores).
Cached under ``scripts/bench/.llama-server/`` (gitignored), keyed by the version and the
wheel's ggml files; never a product dependency.

    .venv/bin/python scripts/bench/llama_server.py [SDIST]   # build (or find) it, print its path

``SDIST`` (or ``--sdist`` of vs_llama_server.py): a llama-cpp-python source archive of the
installed version, e.g. the trimmed one of scripts/gpu-sdist.sh on a machine without PyPI;
default: a cached one, else pip downloads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from importlib.metadata import distribution
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".llama-server"


def installed_version() -> str:
    return distribution("llama-cpp-python").version


def _ggml() -> tuple[Path, Path]:
    """The installed wheel's ggml package config directory and its libraries' directory."""
    wheel = distribution("llama-cpp-python")
    config = Path(wheel.locate_file("lib/cmake/ggml"))
    libs = Path(wheel.locate_file("llama_cpp/lib"))
    if not (config / "ggml-config.cmake").exists() or not any(libs.glob("libggml-base.*")):
        raise RuntimeError(f"no ggml package config in {config} or libraries in {libs}")
    return config, libs


def _cmake_args() -> list[str]:
    config, libs = _ggml()
    return [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_USE_SYSTEM_GGML=ON",
        f"-Dggml_DIR={config}",
        f"-DCMAKE_LIBRARY_PATH={libs}",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        # No web UI: it would be fetched from the network or built with npm.
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
    ]


def _tool(name: str) -> str | None:
    """``name`` (cmake, ninja) on PATH, else the one of its Python package (pip's build of
    the wheel finds them so: a GPU image may have them only as packages)."""
    found = shutil.which(name)
    if found:
        return found
    try:
        package = importlib.import_module(name)
    except ImportError:
        return None
    directory = getattr(package, "CMAKE_BIN_DIR" if name == "cmake" else "BIN_DIR", "")
    binary = Path(directory) / name
    return str(binary) if binary.exists() else None


def backends() -> list[str]:
    """The ggml backends the wheel was built with (``cpu``, ``cuda``, ...)."""
    _config, libs = _ggml()
    found = {p.name.split(".")[0].removeprefix("libggml-") for p in libs.glob("libggml-*.so*")}
    return sorted(found - {"base"})


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


def build(jobs: int | None = None, sdist: Path | None = None) -> Path:
    """Path of a ``llama-server`` built from the installed version's sources (built on the
    first call: minutes; ``nice``d so neighbours keep their share)."""
    cmake, ninja = _tool("cmake"), _tool("ninja")
    if cmake is None:
        raise RuntimeError("cmake not found (on PATH or as the cmake Python package)")
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    version = installed_version()
    args = [*generator, *_cmake_args()]
    _config, libs = _ggml()
    stamps = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(libs.iterdir())]
    key = hashlib.sha256(" ".join([version, *args, *stamps]).encode()).hexdigest()[:10]
    out = CACHE / f"{version}-{key}"
    binary = out / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    source = out / "src"
    if not source.exists():
        with tarfile.open(sdist or _sdist(version)) as tar:
            prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            if not members:
                raise RuntimeError(f"{sdist} holds no llama-cpp-python {version} sources")
            for member in members:
                member.name = member.name[len(prefix) :]
            tar.extractall(source, members=members, filter="data")
    nice = ["nice", "-n", "15"]
    build_dir = str(out / "build")
    subprocess.run([*nice, cmake, "-S", str(source), "-B", build_dir, *args], check=True)
    jobs = jobs or os.cpu_count() or 2
    subprocess.run(
        [*nice, cmake, "--build", build_dir, "--target", "llama-server", "-j", str(jobs)],
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
    binary: Path,
    model: Path,
    *,
    n_ctx: int,
    slots: int,
    threads: int,
    repack: bool,
    gpu_layers: int,
    log_path: Path,
) -> LlamaServer:
    """Start ``llama-server`` (``binary``, from ``build``) on ``model`` with the inference
    service's settings: ``n_ctx`` is the whole KV cache (llama-server splits it across
    ``slots`` like the batched engine shares it), ``threads`` for decode and batch, weights
    repacked only if ``repack``, ``gpu_layers`` layers offloaded to the GPU."""
    import common  # not at the top: building needs no appliance (gpu-check.sh builds first)

    port = common.free_port()
    command = [
        str(binary),
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
        "-ngl",
        str(gpu_layers),
        "--kv-unified",
        "--jinja",
    ]
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


def vram_mib() -> dict[int, float]:
    """GPU memory in use by each process (MiB, by pid), as nvidia-smi reports it; empty
    without an NVIDIA GPU."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    used: dict[int, float] = {}
    for line in listed.splitlines():
        pid, _, mib = line.partition(",")
        with contextlib.suppress(ValueError):
            used[int(pid)] = used.get(int(pid), 0.0) + float(mib)
    return used


if __name__ == "__main__":
    print(build(sdist=Path(sys.argv[1]) if len(sys.argv) > 1 else None))
