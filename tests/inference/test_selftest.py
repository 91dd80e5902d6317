"""The model self-test (appliance/inference/selftest.py): real children dying by real
signals, the real bundled models, a real requantized model that llama.cpp repacks, and a
real inference service refusing to start on a remembered crash."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_settings, service_env

from appliance.cli import initialise, main
from appliance.inference import models, selftest

pytestmark = pytest.mark.inference

CHAT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBED_FILE = "all-MiniLM-L6-v2.f16.gguf"
#: A child that dies by ``signal`` without leaving a core file behind.
DIE_BY = (
    "import os, resource, signal; resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); "
    "os.kill(os.getpid(), signal.{name})"
)
#: A real segmentation fault: reading address 0.
SEGFAULT = (
    "import ctypes, resource; resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); ctypes.string_at(0)"
)


def own_settings(tmp_path: Path, models_dir: Path, cpu_repack: str = "auto"):
    """Initialised settings with a models directory of their own (its own verdicts file),
    whose model files link to the session's; ``cpu_repack`` in the data dir's
    appliance.toml, so that child processes see it too."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "appliance.toml").write_text(f'[inference]\ncpu_repack = "{cpu_repack}"\n')
    settings = make_settings(data)
    initialise(settings)
    target = settings.paths.models
    target.mkdir(parents=True, exist_ok=True)
    for name in (CHAT_FILE, EMBED_FILE, models.REGISTRY_FILE):
        source = models_dir / name
        if name == models.REGISTRY_FILE:
            shutil.copyfile(source, target / name)
        else:
            (target / name).symlink_to(source)
    return settings


def verdicts(settings) -> dict:
    path = settings.paths.models / selftest.VERDICTS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (SEGFAULT, "SIGSEGV"),
        (DIE_BY.format(name="SIGILL"), "SIGILL"),
        (DIE_BY.format(name="SIGBUS"), "SIGBUS"),
    ],
)
def test_a_child_killed_by_a_signal_is_reported_with_the_signal_flags_and_fixes(code, name):
    result = selftest.run_child([sys.executable, "-c", code], timeout=60)
    assert result.signal == name
    verdict = selftest.verdict_of(result, repack=True, chat="chat-x", embedding="embed-y")
    assert verdict.crashed and not verdict.ok
    message = selftest.crash_message(verdict)
    assert f"died with {name}" in message
    assert "chat chat-x, embedding embed-y, CPU repacking on" in message
    assert "CPU flags that matter on this machine: " in message
    for flag in selftest.notable_flags(selftest.cpu_flags()):
        assert flag in message
    assert 'inference.cpu_repack = "off"' in message
    assert f"llama-build.sh --rebuild {sys.executable}" in message
    if name == "SIGILL":
        assert "built on another CPU" in message


def test_repacking_off_is_not_offered_as_the_fix_when_it_is_already_off():
    result = selftest.run_child([sys.executable, "-c", SEGFAULT], timeout=60)
    verdict = selftest.verdict_of(result, repack=False, chat="c", embedding="e")
    message = selftest.crash_message(verdict)
    assert "cpu_repack" not in message
    assert "llama-build.sh --rebuild" in message


def test_a_failing_child_and_a_hanging_one_are_not_crashes():
    failed = selftest.verdict_of(
        selftest.run_child([sys.executable, "-c", "raise SystemExit('no model here')"]),
        repack=False,
        chat="c",
        embedding="e",
    )
    assert (failed.outcome, failed.detail) == ("failed", "no model here")
    hung = selftest.run_child([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
    assert hung.returncode is None and hung.signal is None
    verdict = selftest.verdict_of(hung, repack=False, chat="c", embedding="e")
    assert verdict.outcome == "timeout"


def test_notable_flags_are_the_kernel_choosing_ones():
    flags = ["fpu", "avx", "avx2", "fma", "smep", "amx_tile", "amx_int8", "avx512f", "avx_vnni"]
    assert selftest.notable_flags(flags) == [
        "avx2",
        "fma",
        "amx_tile",
        "amx_int8",
        "avx512f",
        "avx_vnni",
    ]


def test_the_real_self_test_passes_with_the_bundled_models(tmp_path, models_dir):
    settings = own_settings(tmp_path, models_dir, cpu_repack="off")
    verdict = selftest.run(settings, repack=False)
    assert verdict.ok, verdict
    assert verdict.signal is None
    assert verdict.chat_model == models.DEFAULT_CHAT
    assert verdict.embedding_model == models.DEFAULT_EMBEDDING
    assert "16-token prompt and 4 tokens out" in verdict.detail
    assert "384-dim embedding" in verdict.detail
    assert selftest.remembered(settings, repack=False) == verdict
    assert selftest.remembered(settings, repack=True) is None


def test_auto_probes_once_remembers_and_does_not_probe_again(tmp_path, models_dir):
    settings = own_settings(tmp_path, models_dir, cpu_repack="auto")
    assert verdicts(settings) == {}
    repack, why, probe = selftest.choose(settings)
    assert probe is not None and probe.ok and probe.repack
    assert (repack, why) == (True, "auto: the probe with CPU repacking passed")
    stored = verdicts(settings)
    assert [v["repack"] for v in stored.values()] == [True]
    # The next start (another process, the same machine and build) takes the verdict.
    again = make_settings(settings.paths.data_dir)
    assert selftest.choose(again) == (True, "auto: the probe with CPU repacking passed", None)
    assert verdicts(again) == stored
    # The service's path: the probe's verdict is the self-test of what it loads.
    assert selftest.choose_repack(again) is True
    assert verdicts(again) == stored


def test_auto_turns_repacking_off_after_a_crashed_probe(tmp_path, models_dir):
    settings = own_settings(tmp_path, models_dir, cpu_repack="auto")
    crash = selftest.run_child([sys.executable, "-c", SEGFAULT], timeout=60)
    selftest.remember(
        settings,
        selftest.verdict_of(
            crash, repack=True, chat=models.DEFAULT_CHAT, embedding=models.DEFAULT_EMBEDDING
        ),
    )
    repack, why, probe = selftest.choose(settings)
    assert (repack, probe) == (False, None)
    assert "died with SIGSEGV" in why


def test_the_inference_service_refuses_to_start_on_a_remembered_crash(tmp_path, models_dir):
    settings = own_settings(tmp_path, models_dir, cpu_repack="off")
    crash = selftest.run_child([sys.executable, "-c", DIE_BY.format(name="SIGILL")], timeout=60)
    selftest.remember(
        settings,
        selftest.verdict_of(
            crash, repack=False, chat=models.DEFAULT_CHAT, embedding=models.DEFAULT_EMBEDDING
        ),
    )
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "inference"],
        env=service_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = [line for line in result.stdout.splitlines() if "refusing to start" in line]
    assert len(lines) == 1, result.stdout
    assert "died with SIGILL" in lines[0]
    assert "llama-build.sh --rebuild" in lines[0]
    assert "Traceback" not in result.stdout


@pytest.fixture(scope="module")
def q4_0_model(tmp_path_factory, models_dir) -> Path:
    """The bundled chat model requantized to Q4_0, a type llama.cpp repacks on AVX2 CPUs."""
    import llama_cpp

    path = tmp_path_factory.mktemp("q4_0") / "smollm2-q4_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    params.nthread = 2
    source = str(models_dir / CHAT_FILE).encode()
    assert llama_cpp.llama_model_quantize(source, str(path).encode(), ctypes.byref(params)) == 0
    return path


needs_avx2 = pytest.mark.skipif(
    "avx2" not in selftest.cpu_flags(), reason="Q4_0 is repacked on AVX2 CPUs"
)


@needs_avx2
def test_models_load_without_repacking_unless_it_is_turned_on(tmp_path, models_dir, q4_0_model):
    settings = own_settings(tmp_path, models_dir)
    registry = models.load_registry(settings)
    target = settings.paths.models / q4_0_model.name
    target.symlink_to(q4_0_model)
    models.register(registry, "q4-0", target, kind="chat", license="test", source="test")
    # What the service loads by default (load_engine, no setting given), in a child
    # process that reports the buffers llama.cpp allocated for the weights (its log's
    # info lines, which the service's own routing of that log, done first here, drops).
    code = (
        "import ctypes, llama_cpp\n"
        "from appliance.inference.loader import route_llama_log\n"
        "route_llama_log()\n"
        "lines = []\n"
        "@llama_cpp.llama_log_callback\n"
        "def keep(level, text, user):\n"
        "    lines.append(text.decode('utf-8', 'replace'))\n"
        "llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))\n"
        "from appliance.config import Settings\n"
        "from appliance.inference.engine import load_engine\n"
        "load_engine(Settings.load(), with_embeddings=False)\n"
        "print(''.join(line for line in lines if 'model buffer size' in line))\n"
    )
    env = service_env(settings, APPLIANCE_INFERENCE__CHAT_MODEL="q4-0")
    default = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert default.returncode == 0, default.stderr
    assert "CPU_Mapped model buffer size" in default.stdout
    assert "REPACK" not in default.stdout
    # With repacking on, the same weights go to llama.cpp's repacked buffer.
    on = selftest.run(settings, repack=True, chat_model="q4-0")
    assert on.ok, on
    assert "weights repacked: CPU_REPACK" in on.detail
    off = selftest.run(settings, repack=False, chat_model="q4-0")
    assert off.ok, off
    assert "weights repacked: none" in off.detail


def test_set_default_runs_the_self_test_and_refuses_a_model_that_fails_it(
    tmp_path, models_dir, capsys
):
    settings = own_settings(tmp_path, models_dir, cpu_repack="off")
    registry = models.load_registry(settings)
    # The embedding GGUF registered as a chat model: it loads, but cannot generate.
    target = settings.paths.models / "encoder-as-chat.gguf"
    target.symlink_to(models_dir / EMBED_FILE)
    models.register(registry, "encoder-as-chat", target, kind="chat", license="t", source="t")
    data = ["--data-dir", str(settings.paths.data_dir)]
    assert main(["models", "set-default", "encoder-as-chat", *data]) == 1
    err = capsys.readouterr().err
    assert "self-test FAILED (failed)" in err
    assert "encoder-as-chat was NOT made the default" in err
    assert models.load_registry(settings).default_chat == models.DEFAULT_CHAT
    assert main(["models", "set-default", models.DEFAULT_CHAT, *data]) == 0
    out = capsys.readouterr().out
    assert "self-test passed" in out
    assert f"{models.DEFAULT_CHAT} is now the default chat model" in out
