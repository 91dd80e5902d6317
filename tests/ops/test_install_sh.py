"""install.sh: the system mode's dry run prints the whole plan and changes nothing;
shellcheck is clean; local-only and system-only flags are not mixed up."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "install.sh"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_system_dry_run_prints_the_full_plan_and_changes_nothing():
    before = {p: p.exists() for p in map(Path, ("/opt/appliance", "/etc/appliance"))}
    result = install("--system", "--dry-run", "--http-redirect", "--hostname", "ai.example.lan")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in (
        "DRY RUN",
        "==> checking this machine",
        "useradd --system",
        "install -d -m 0700 -o appliance -g appliance /var/lib/appliance",
        "python3 -m venv /opt/appliance/venv",
        'building llama-cpp-python (not installed): CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=ON"',
        "verify that llama.cpp has GPU offload",
        "write /etc/appliance/appliance.env (mode 0640, owner root:appliance)",
        "write /etc/appliance/appliance.toml (mode 0640, owner root:appliance)",
        'public_url = "https://ai.example.lan"',
        "redirect_port = 80",
        "openssl req -x509",
        "subjectAltName=DNS:ai.example.lan",
        "appliance init",
        "appliance models install-defaults",
        "appliance models self-test",
        "systemd/appliance-web.service /etc/systemd/system/appliance-web.service",
        "systemctl enable appliance.target",
        "systemctl enable --now appliance-backup.timer",
        "systemctl restart appliance.target",
        "/readyz",
        "setup link",
    ):
        assert expected in out, f"missing from the plan: {expected}\n{out}"
    assert {p: p.exists() for p in before} == before


def test_dry_run_names_whats_missing_and_how_to_get_it():
    out = install("--system", "--dry-run").stdout
    if shutil.which("nvidia-smi") is None:
        assert "no NVIDIA driver (nvidia-smi not found)" in out
        assert "fix: Debian: apt-get install nvidia-driver" in out
        assert "a real run stops here" in out


def test_cpu_mode_skips_the_cuda_build():
    out = install("--system", "--cpu", "--dry-run").stdout
    assert "GPU: not used (--cpu)" in out
    assert "GGML_CUDA" not in out
    assert "no NVIDIA driver" not in out


def test_model_pull_needs_a_checksum_and_is_planned_with_one():
    bad = install("--system", "--dry-run", "--model", "https://example.com/m.gguf")
    assert bad.returncode == 2
    assert "--model URL needs --sha256" in bad.stderr
    good = install(
        "--system", "--dry-run", "--model", "https://example.com/m.gguf", "--sha256", "ab" * 32
    )
    assert good.returncode == 0
    assert "models pull https://example.com/m.gguf --default --sha256 " + "ab" * 32 in good.stdout


def test_a_catalog_model_or_hub_file_needs_no_checksum():
    for spec in ("qwen2.5-7b-instruct-q4_k_m", "hf:acme/x-GGUF/x.Q4_K_M.gguf"):
        result = install("--system", "--dry-run", "--cpu", "--model", spec)
        assert result.returncode == 0, result.stderr
        assert f"==> chat model: {spec}" in result.stdout
        assert f"appliance models pull {spec} --default\n" in result.stdout


def test_model_auto_plans_the_recommendation_then_its_pull():
    out = install("--system", "--dry-run", "--cpu", "--model", "auto").stdout
    plan = out[out.index("==> chat model: auto") :]
    recommend = plan.index("appliance models recommend")
    pull = plan.index(r"appliance models pull \<the\ recommended\ model\> --default")
    assert recommend < pull < plan.index("==> systemd units")


def test_given_certificate_is_installed_instead_of_a_generated_one(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("cert")
    key.write_text("key")
    out = install("--system", "--dry-run", "--cert", str(cert), "--key", str(key)).stdout
    assert f"install -m 0640 -o root -g appliance {key} /etc/appliance/tls/key.pem" in out
    assert "openssl req" not in out
    assert install("--system", "--dry-run", "--cert", str(cert)).returncode == 2


def test_uninstall_keeps_data_unless_purged():
    kept = install("--uninstall", "--dry-run")
    assert kept.returncode == 0
    assert "rm -rf /opt/appliance" in kept.stdout
    assert "rm -rf /var/lib/appliance" not in kept.stdout
    assert "Kept: the data in /var/lib/appliance" in kept.stdout
    purged = install("--uninstall", "--purge-data", "--dry-run").stdout
    assert "rm -rf /var/lib/appliance /etc/appliance" in purged
    assert install("--system", "--purge-data", "--dry-run").returncode == 2


def test_system_flags_are_refused_in_local_mode():
    result = install("--cpu", "--no-start")
    assert result.returncode == 2
    assert "--cpu only applies to --system" in result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_is_clean():
    scripts = [str(ROOT / "install.sh"), *map(str, sorted((ROOT / "scripts").glob("*.sh")))]
    result = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def llama_build(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "llama-build.sh"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_the_build_flags_are_native_for_the_cpu_and_add_cuda_for_a_gpu():
    assert llama_build("--print-args", "--cpu").stdout.strip() == "-DGGML_NATIVE=ON"
    assert llama_build("--print-args", "--cuda").stdout.strip() == "-DGGML_NATIVE=ON -DGGML_CUDA=ON"
    custom = llama_build("--print-args", "--cpu", env={"CMAKE_ARGS": "-DGGML_NATIVE=OFF"})
    assert custom.stdout.strip() == "-DGGML_NATIVE=OFF"


def test_a_venv_built_on_another_cpu_is_rebuilt_without_the_other_cpus_wheel(tmp_path):
    """The record of the CPU it was built for lives in the venv; pip's own cache is not
    used (it keys wheels by source, not by CPU): a cache of this machine's builds is."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    version = importlib.metadata.version("llama_cpp_python")
    home = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "CMAKE_ARGS": ""}

    first = llama_build("--cpu", str(python), env=home)
    assert first.returncode == 0, first.stderr
    assert "no build record; taken as built on this machine" in first.stdout
    marker = venv / "llama-cpp-build"
    fingerprint = marker.read_text().strip()
    assert len(fingerprint) == 16
    again = llama_build("--cpu", str(python), env=home)
    assert f"llama-cpp-python {version}: built on this machine (cpu" in again.stdout

    marker.write_text("0123456789abcdef\n")  # the disk moved here from another machine
    moved = llama_build("--cpu", "--dry-run", str(python), env=home)
    assert moved.returncode == 0, moved.stderr
    assert "built on another machine" in moved.stdout
    assert f"fingerprint 0123456789abcdef, this one {fingerprint}" in moved.stdout
    cache = tmp_path / "cache" / "appliance" / f"llama-cpp-{fingerprint}"
    assert f"--cache-dir {cache} --force-reinstall --no-deps llama-cpp-python=={version}" in (
        moved.stdout
    )
    assert "CMAKE_ARGS=-DGGML_NATIVE=ON" in moved.stdout
    # A CUDA build is another build: it does not take the CPU build's record.
    cuda = llama_build("--cuda", "--dry-run", str(python), env=home)
    assert "building llama-cpp-python" in cuda.stdout
    assert "-DGGML_CUDA=ON" in cuda.stdout


def test_the_gpu_check_stops_at_once_and_says_why_without_a_gpu(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    out = tmp_path / "results"
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-check.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OUT": str(out)},
    )
    assert result.returncode == 2
    assert "no NVIDIA GPU here (nvidia-smi not found); nothing was run" in result.stderr
    assert "nvidia-smi not found" in (out / "summary.txt").read_text()


def test_the_trimmed_sdist_keeps_what_both_builds_compile(tmp_path):
    """scripts/gpu-sdist.sh on a stand-in sdist: the wheel's sources and llama-server's
    (tools/, the UI's CMake files and scripts/ui-assets.cmake) stay; the rest goes."""
    llama = tmp_path / "src" / "llama_cpp_python-9.9.9" / "vendor" / "llama.cpp"
    kept = [
        "CMakeLists.txt",
        "src/llama.cpp",
        "common/common.cpp",
        "ggml/src/ggml-cpu/ggml-cpu.c",
        "ggml/src/ggml-cuda/ggml-cuda.cu",
        "tools/CMakeLists.txt",
        "tools/mtmd/mtmd.cpp",
        "tools/server/server.cpp",
        "tools/quantize/quantize.cpp",
        "tools/ui/CMakeLists.txt",
        "tools/ui/ui.cpp.in",
        "scripts/ui-assets.cmake",
        "vendor/cpp-httplib/httplib.h",
    ]
    dropped = [
        "models/ggml-vocab-llama.gguf",
        "docs/build.md",
        "tools/ui/src/app.ts",
        "tools/ui/package-lock.json",
        "scripts/sync-ggml.sh",
        "ggml/src/ggml-vulkan/ggml-vulkan.cpp",
    ]
    for name in kept + dropped:
        (llama / name).parent.mkdir(parents=True, exist_ok=True)
        (llama / name).write_text(name)
    (llama.parents[1] / "docs").mkdir()
    sdist = tmp_path / "llama_cpp_python-9.9.9.tar.gz"
    subprocess.run(
        ["tar", "-C", str(tmp_path / "src"), "-czf", str(sdist), "llama_cpp_python-9.9.9"],
        check=True,
    )
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-sdist.sh"), "--from", str(sdist), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    listing = subprocess.run(
        ["tar", "-tzf", str(out / "llama_cpp_python-9.9.9-cuda.tar.gz")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    prefix = "llama_cpp_python-9.9.9/vendor/llama.cpp/"
    files = {name.removeprefix(prefix) for name in listing if not name.endswith("/")}
    assert files == set(kept)
