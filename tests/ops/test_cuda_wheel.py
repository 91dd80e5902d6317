"""scripts/cuda_wheel.py: the slimmed wheel keeps each library once and still loads; the
stand-in libcuda links what cuda.h declares; the build is portable and for the GPU asked."""

from __future__ import annotations

import base64
import csv
import ctypes
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cuda_wheel(monkeypatch):
    """scripts/cuda_wheel.py as a module (scripts/ on sys.path for the test only)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import cuda_wheel

    return cuda_wheel


def shared_library(folder: Path, name: str, soname: str, source: str, *links: str) -> bytes:
    """A real shared library built by gcc, with RUNPATH $ORIGIN as llama-cpp-python's."""
    (folder / f"{name}.c").write_text(source)
    out = folder / name
    subprocess.run(
        ["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-Wl,-rpath,$ORIGIN",
         "-o", str(out), str(folder / f"{name}.c"), f"-L{folder}", *links],
        check=True,
    )  # fmt: skip
    return out.read_bytes()


def wheel_like_llama_cpp_python(tmp_path: Path) -> Path:
    """A wheel laid out as llama-cpp-python's: libggml-base and libllama (which needs
    libggml-base.so.0) each under three names in llama_cpp/lib and again in lib/."""
    build = tmp_path / "build"
    build.mkdir()
    base = shared_library(
        build, "libggml-base.so.0", "libggml-base.so.0", "int ggml_answer(void) { return 42; }\n"
    )
    (build / "libggml-base.so").symlink_to("libggml-base.so.0")
    llama = shared_library(
        build,
        "libllama.so.0",
        "libllama.so.0",
        "int ggml_answer(void);\nint llama_answer(void) { return ggml_answer() + 1; }\n",
        "-lggml-base",
    )
    members = {
        "llama_cpp/__init__.py": b"",
        "lib/cmake/ggml/ggml-config.cmake": b"# config\n",
        "include/llama.h": b"/* header */\n",
        "llama_cpp_python-9.9.9.dist-info/METADATA": b"Name: llama_cpp_python\nVersion: 9.9.9\n",
        "llama_cpp_python-9.9.9.dist-info/WHEEL": b"Wheel-Version: 1.0\n",
    }
    for folder in ("llama_cpp/lib", "lib"):
        for suffix in ("", ".0", ".0.25.3"):
            members[f"{folder}/libggml-base.so{suffix}"] = base
        for suffix in ("", ".0", ".0.5.0"):
            members[f"{folder}/libllama.so{suffix}"] = llama
    wheel = tmp_path / "dist" / "llama_cpp_python-9.9.9-py3-none-linux_x86_64.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr("llama_cpp_python-9.9.9.dist-info/RECORD", "")
    return wheel


def test_the_slimmed_wheel_has_each_library_once_and_it_loads_under_its_one_name(
    tmp_path, cuda_wheel
):
    slimmed = cuda_wheel.slim(wheel_like_llama_cpp_python(tmp_path), tmp_path / "slim")
    with zipfile.ZipFile(slimmed) as archive:
        names = set(archive.namelist())
        assert {n for n in names if ".so" in n} == {
            "llama_cpp/lib/libggml-base.so",
            "llama_cpp/lib/libllama.so",
        }
        assert {
            "lib/cmake/ggml/ggml-config.cmake",
            "include/llama.h",
            "llama_cpp/__init__.py",
        } <= names
        record = archive.read("llama_cpp_python-9.9.9.dist-info/RECORD").decode()
        rows = {row[0]: row[1:] for row in csv.reader(io.StringIO(record))}
        assert set(rows) == names
        for name in names - {"llama_cpp_python-9.9.9.dist-info/RECORD"}:
            data = archive.read(name)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert rows[name] == [f"sha256={digest}", str(len(data))], name
        installed = tmp_path / "site"
        archive.extractall(installed)
    libs = installed / "llama_cpp" / "lib"
    assert cuda_wheel._dynamic(libs / "libllama.so", "SONAME") == ["libllama.so"]
    assert "libggml-base.so" in cuda_wheel._dynamic(libs / "libllama.so", "NEEDED")
    # libggml-base.so.0 is gone: libllama.so loads only if its NEEDED entry was renamed.
    assert ctypes.CDLL(str(libs / "libllama.so")).llama_answer() == 43


def test_the_stand_in_libcuda_defines_what_cuda_h_declares_under_its_versioned_names(
    tmp_path, cuda_wheel
):
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "cuda.h").write_text(
        "typedef int CUresult;\n"
        "#define cuMemAlloc cuMemAlloc_v2\n"
        "CUresult cuInit(unsigned int flags);\n"
        "CUresult cuMemAlloc(void **ptr, unsigned long size);\n"
        "typedef CUresult (*cuHook)(int);\n"
    )
    cuda_wheel._stub_libcuda(tmp_path)
    stub = tmp_path / "lib" / "stubs" / "libcuda.so"
    assert cuda_wheel._dynamic(stub, "SONAME") == ["libcuda.so.1"]
    symbols = subprocess.run(
        ["nm", "-D", "--defined-only", str(stub)], capture_output=True, text=True, check=True
    )
    assert {line.split()[-1] for line in symbols.stdout.splitlines()} == {"cuInit", "cuMemAlloc_v2"}
    assert ctypes.CDLL(str(stub)).cuInit(0) == 999


def test_the_build_is_for_the_gpu_asked_with_a_portable_cpu_part(tmp_path, capsys, cuda_wheel):
    sdist = tmp_path / "llama_cpp_python-9.9.9-cuda.tar.gz"
    sdist.write_bytes(b"")
    cuda_wheel.main(
        ["build", "--sdist", str(sdist), "--arch", "100", "--work", str(tmp_path), "--dry-run"]
    )
    out = capsys.readouterr().out
    assert "nvidia-cuda-nvcc==13.0.* nvidia-cuda-crt==13.0.*" in out
    flags = next(line for line in out.splitlines() if line.startswith("CMAKE_ARGS=")).split()
    assert {
        "CMAKE_ARGS=-DGGML_CUDA=ON",
        "-DGGML_NATIVE=OFF",
        "-DGGML_AVX2=ON",
        "-DCMAKE_CUDA_ARCHITECTURES=100",
    } <= set(flags)
    assert f"-DCMAKE_CUDA_COMPILER={tmp_path}/cuda-site/nvidia/cu13/bin/nvcc" in flags
    assert f"build folder: {tmp_path / 'build'}" in out


def test_gpu_sdist_carries_the_cuda_wheel_slimmed(tmp_path):
    source = tmp_path / "src" / "llama_cpp_python-9.9.9" / "vendor" / "llama.cpp"
    source.mkdir(parents=True)
    (source / "CMakeLists.txt").write_text("project(llama)\n")
    sdist = tmp_path / "llama_cpp_python-9.9.9.tar.gz"
    subprocess.run(["tar", "-C", str(tmp_path / "src"), "-czf", str(sdist), "."], check=True)
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-sdist.sh"), "--from", str(sdist), "--out", str(out),
         "--cuda-wheel", str(wheel_like_llama_cpp_python(tmp_path))],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (carried,) = (out / "cuda-wheel").glob("*.whl")
    with zipfile.ZipFile(carried) as archive:
        assert sorted(n for n in archive.namelist() if ".so" in n) == [
            "llama_cpp/lib/libggml-base.so",
            "llama_cpp/lib/libllama.so",
        ]
