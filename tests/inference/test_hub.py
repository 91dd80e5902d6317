"""``appliance models pull`` from the Hugging Face hub: a local stand-in for the hub
(``hub_standin.py``) pointed to by ``HF_ENDPOINT``, and the real ``appliance`` command in a
child process (huggingface_hub reads its environment when it is imported).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_settings
from hub_standin import HubStandIn, write_gguf

from appliance.inference import models

CHAT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory) -> bytes:
    """A valid 2 MB GGUF (llama architecture, context length 2048)."""
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    return write_gguf(path, "llama", 2048, (500, 1000), seed=1).read_bytes()


@pytest.fixture
def hub():
    with HubStandIn() as stand_in:
        yield stand_in


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


def appliance(data_dir: Path, hub: HubStandIn, *args: str, **env: str):
    """Run ``appliance ARGS`` against the stand-in, isolated from the developer's hub
    cache, token and settings."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("APPLIANCE_", "HF_", "HUGGINGFACE_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env={
            **base,
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(data_dir.parent / "hf-home"),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            **env,
        },
        timeout=120,
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(data_dir: Path) -> list[str]:
    models_dir = data_dir / "models"
    return sorted(p.name for p in models_dir.iterdir()) if models_dir.exists() else []


def test_pull_by_hf_spec_downloads_the_bundled_gguf_verifies_and_registers_it(
    hub, data_dir, models_dir
):
    data = (models_dir / CHAT_FILE).read_bytes()
    hub.add("smol/SmolLM2-GGUF", CHAT_FILE, data, commit=COMMIT)

    done = appliance(data_dir, hub, "models", "pull", f"hf:smol/SmolLM2-GGUF/{CHAT_FILE}")

    assert done.returncode == 0, done.stderr
    assert f"sha256 {sha256(data)}" in done.stdout
    registry = models.load_registry(make_settings(data_dir))
    model = registry.models["smollm2-135m-instruct.q4_1"]
    assert (model.kind, model.file, model.sha256) == ("chat", CHAT_FILE, sha256(data))
    assert model.source == f"hf:smol/SmolLM2-GGUF/{CHAT_FILE}@{COMMIT}"  # main, resolved
    assert model.context_length == 8192
    assert registry.default_chat == model.id
    assert (data_dir / "models" / CHAT_FILE).read_bytes() == data
    assert leftovers(data_dir) == [CHAT_FILE, models.REGISTRY_FILE]  # no staging folder
    # The metadata came from the hub; the bytes from the CDN it redirected to, pinned to
    # the commit the metadata named.
    assert next(r.path for r in hub.of("hub", "HEAD")) == (
        f"/smol/SmolLM2-GGUF/resolve/main/{CHAT_FILE}"
    )
    assert [r.path for r in hub.of("cdn")] == [f"/cdn/smol/SmolLM2-GGUF/{COMMIT}/{CHAT_FILE}"]


def test_pull_by_a_catalog_name_added_in_the_data_dir(hub, data_dir, small_gguf):
    hub.add("acme/tiny-GGUF", "sub/tiny-q4.gguf", small_gguf, commit=COMMIT)
    (data_dir / "models").mkdir(parents=True)
    (data_dir / "models" / "catalog.toml").write_text(
        '[models."tiny-test-chat"]\n'
        'kind = "chat"\n'
        'repo = "acme/tiny-GGUF"\n'
        'file = "sub/tiny-q4.gguf"\n'
        f'revision = "{COMMIT}"\n'
        f'sha256 = "{sha256(small_gguf)}"\n'
        "size_bytes = 2_000_000\n"
        "params_b = 0.001\n"
        "context_length = 2048\n"
        "memory_gb = 0.1\n"
        'license = "MIT (test)"\n'
    )

    listed = appliance(data_dir, hub, "models", "list", "--catalog")
    names = [entry["name"] for entry in json.loads(listed.stdout)]
    assert "tiny-test-chat" in names and "qwen2.5-7b-instruct-q4_k_m" in names
    # Not --default: that runs the model self-test, which a weights-only GGUF cannot pass.
    done = appliance(data_dir, hub, "models", "pull", "tiny-test-chat")

    assert done.returncode == 0, done.stderr
    registry = models.load_registry(make_settings(data_dir))
    model = registry.models["tiny-test-chat"]
    assert (model.file, model.license, model.context_length) == ("tiny-q4.gguf", "MIT (test)", 2048)
    assert model.source == f"hf:acme/tiny-GGUF/sub/tiny-q4.gguf@{COMMIT}"
    assert (data_dir / "models" / "tiny-q4.gguf").read_bytes() == small_gguf
    assert next(r.path for r in hub.of("hub", "HEAD")) == (
        f"/acme/tiny-GGUF/resolve/{COMMIT}/sub/tiny-q4.gguf"
    )


def test_a_download_that_differs_from_the_hubs_sha256_is_refused_and_deleted(
    hub, data_dir, small_gguf
):
    corrupted = bytearray(small_gguf)
    corrupted[len(corrupted) // 2] ^= 0xFF
    hub.add("acme/tiny-GGUF", "tiny.gguf", bytes(corrupted), published_sha256=sha256(small_gguf))

    done = appliance(data_dir, hub, "models", "pull", "hf:acme/tiny-GGUF/tiny.gguf")

    assert done.returncode == 2
    assert "checksum mismatch" in done.stderr
    assert sha256(small_gguf) in done.stderr and sha256(bytes(corrupted)) in done.stderr
    assert "deleted" in done.stderr
    assert leftovers(data_dir) == []  # neither the file nor the staging folder
    assert models.load_registry(make_settings(data_dir)).models == {}
    assert len(hub.of("cdn")) == 1  # it was downloaded, then refused


def test_a_catalog_sha256_the_hub_does_not_publish_stops_before_downloading(
    hub, data_dir, small_gguf
):
    hub.add("acme/tiny-GGUF", "tiny.gguf", small_gguf)
    (data_dir / "models").mkdir(parents=True)
    (data_dir / "models" / "catalog.toml").write_text(
        '[models.tiny]\nkind = "chat"\nrepo = "acme/tiny-GGUF"\nfile = "tiny.gguf"\n'
        f'sha256 = "{"0" * 64}"\nmemory_gb = 0.1\nlicense = "MIT"\n'
    )

    done = appliance(data_dir, hub, "models", "pull", "tiny")

    assert done.returncode == 2
    assert f"the hub publishes SHA-256 {sha256(small_gguf)}" in done.stderr
    assert "nothing was downloaded" in done.stderr
    assert hub.of("cdn") == []
    assert leftovers(data_dir) == ["catalog.toml"]


def test_an_interrupted_download_resumes_with_a_range_request(hub, data_dir, models_dir):
    data = (models_dir / CHAT_FILE).read_bytes()  # 98 MB
    hub.add("smol/SmolLM2-GGUF", CHAT_FILE, data, commit=COMMIT)
    cut = 25 * 1024 * 1024
    hub.cut_after = cut  # the first transfer drops after 25 MiB

    done = appliance(data_dir, hub, "models", "pull", f"hf:smol/SmolLM2-GGUF/{CHAT_FILE}")

    assert done.returncode == 0, done.stderr
    first, second = hub.of("cdn", "GET")
    assert "range" not in first.headers
    # huggingface_hub keeps what it wrote (whole 10 MiB chunks) and asks for the rest.
    start = int(second.headers["range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= cut
    assert (data_dir / "models" / CHAT_FILE).read_bytes() == data
    model = models.load_registry(make_settings(data_dir)).models["smollm2-135m-instruct.q4_1"]
    assert model.sha256 == sha256(data)


def test_a_gated_model_needs_hf_token_which_never_leaves_the_hub(hub, data_dir, small_gguf):
    hub.add("meta/gated-GGUF", "gated.gguf", small_gguf, token="hf_test_token_123")

    refused = appliance(data_dir, hub, "models", "pull", "hf:meta/gated-GGUF/gated.gguf")
    assert refused.returncode == 2
    assert "gated" in refused.stderr and "HF_TOKEN" in refused.stderr
    assert hub.of("cdn") == []

    done = appliance(
        data_dir,
        hub,
        "models",
        "pull",
        "hf:meta/gated-GGUF/gated.gguf",
        HF_TOKEN="hf_test_token_123",
    )
    assert done.returncode == 0, done.stderr
    assert "hf_test_token_123" not in done.stdout + done.stderr
    hub_auth = {r.headers.get("authorization") for r in hub.of("hub")}
    assert "Bearer hf_test_token_123" in hub_auth
    assert [r.headers.get("authorization") for r in hub.of("cdn")] == [None]  # off the hub


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hf:acme/tiny-GGUF/missing.gguf", "no such file"),
        ("hf:acme/nope/tiny.gguf", "no such repository"),
        (f"hf:acme/tiny-GGUF/tiny.gguf@{'f' * 40}", "no such revision"),
        ("hf:acme/tiny-GGUF/tiny.bin", "hf:OWNER/REPO/FILE.gguf"),
        ("hf:acme/tiny-GGUF/../x.gguf", "hf:OWNER/REPO/FILE.gguf"),
        ("no-such-model", "not in the model catalog"),
        ("https://example.org/m.gguf", "needs --sha256"),
    ],
)
def test_pull_explains_what_is_wrong(hub, data_dir, small_gguf, spec, message):
    hub.add("acme/tiny-GGUF", "tiny.gguf", small_gguf)

    done = appliance(data_dir, hub, "models", "pull", spec)

    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert hub.of("cdn") == []
    assert leftovers(data_dir) == []


def test_no_hub_at_all_is_a_clear_error(tmp_path, data_dir):
    with HubStandIn() as gone:
        url = gone.url
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "models",
            "pull",
            "hf:a/b/c.gguf",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf")},
        timeout=120,
    )
    assert done.returncode == 2
    assert "cannot download hf:a/b/c.gguf@main" in done.stderr
    assert "HF_ENDPOINT" in done.stderr
