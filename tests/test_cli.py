"""The `appliance` command: init, doctor, version and clear errors for bad config."""

import os
import stat
import subprocess
import sys

import pytest

from appliance import firstrun, vault
from appliance.cli import main
from appliance.db import open_db


def run_cli(*args, env=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=120,
    )


def test_init_creates_layout_secrets_and_prints_setup_link(tmp_path):
    data = tmp_path / "data"
    result = run_cli("init", "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    for name in ("files", "models", "outbox", "secrets"):
        assert (data / name).is_dir()
    for name in vault.SECRETS:
        mode = stat.S_IMODE((data / "secrets" / name).stat().st_mode)
        assert mode == 0o600, name
    assert stat.S_IMODE((data / "secrets").stat().st_mode) == 0o700
    assert "/setup?token=" in result.stdout
    token = result.stdout.split("token=", 1)[1].split()[0]
    # The secrets never appear in what init prints.
    for name in vault.SECRETS:
        assert (data / "secrets" / name).read_text().strip() not in result.stdout
    # Running it again keeps the secrets and the same link.
    before = (data / "secrets" / "session_key").read_text()
    again = run_cli("init", env={"APPLIANCE_DATA_DIR": str(data)})
    assert again.returncode == 0
    assert (data / "secrets" / "session_key").read_text() == before
    assert f"token={token}" in again.stdout


def test_init_prints_no_link_once_claimed(settings):
    db = open_db(settings)
    token = firstrun.setup_token(settings, db)
    firstrun.claim(settings, db, token, "ops@example.com")
    db.close()
    result = run_cli("init", "--data-dir", str(settings.paths.data_dir))
    assert result.returncode == 0
    assert "setup" not in result.stdout


def test_bad_config_is_one_clear_line_without_traceback(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "appliance.toml").write_text("[web]\nprot = 8000\n")
    result = run_cli("init", "--data-dir", str(data))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "web.prot" in lines[0]


def test_wrong_type_in_environment(tmp_path):
    result = run_cli("doctor", "--data-dir", str(tmp_path), env={"APPLIANCE_WEB__PORT": "http"})
    assert result.returncode == 2
    assert "APPLIANCE_WEB__PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli("init", "--data-dir", str(blocker / "data"))
    assert result.returncode == 2
    assert "not writable" in result.stderr
    assert "Traceback" not in result.stderr


def test_version(capsys):
    import appliance

    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == appliance.__version__


def test_doctor_passes_on_a_healthy_install(settings, models_dir):
    from conftest import link_models

    link_models(settings, models_dir)
    result = run_cli("doctor", "--data-dir", str(settings.paths.data_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (
        "data dir",
        "secrets",
        "database",
        "sqlite-vec",
        "chat model",
        "model self-test",
        "llama.cpp",
    ):
        assert name in result.stdout
    assert "FAIL" not in result.stdout


def test_doctor_fails_when_a_model_or_secret_is_missing(settings):
    result = run_cli("doctor", "--data-dir", str(settings.paths.data_dir))
    assert result.returncode == 1
    assert "FAIL  chat model" in result.stdout
    (settings.paths.secrets / "otp_key").unlink()
    result = run_cli("doctor", "--data-dir", str(settings.paths.data_dir))
    assert "FAIL  secrets" in result.stdout
    assert "otp_key" in result.stdout


def test_doctor_tells_a_gpu_build_that_found_no_gpu_from_a_cpu_build(monkeypatch, capfd):
    import llama_cpp

    from appliance import doctor
    from appliance.inference import base, loader

    if base.gpu_backends():
        pytest.skip("this machine's llama.cpp is not a CPU build")
    assert doctor._gpu().detail == "built WITHOUT GPU support: models run on the CPU"

    # The GPU is the edge of this box: llama.cpp as a CUDA build on a server whose driver is
    # too old, which logs why (through the routed log callback, as llama.cpp calls it) and
    # finds no GPU.
    info = b"CUDA : ARCHS = 900 | USE_GRAPHS = 1 | CPU : SSE3 = 1 | AVX2 = 1 | "
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: info)
    why = "ggml_cuda_init: failed to initialize CUDA: CUDA driver version is insufficient"

    def no_device() -> bool:
        loader.route_llama_log()
        loader._routed[0](4, f"{why}\n".encode(), None)  # GGML_LOG_LEVEL_ERROR
        return False

    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", no_device)
    check = doctor._gpu()
    assert check.status == "warn"
    assert check.detail == f"built for CUDA but found no GPU ({why}): models run on the CPU"
    assert why not in capfd.readouterr().err  # said once, in the doctor's line
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    assert doctor._gpu() == doctor.Check("llama.cpp", "ok", "built with GPU offload (CUDA)")
