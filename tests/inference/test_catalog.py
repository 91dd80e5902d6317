"""The model catalog, ``appliance models recommend`` and what ``models set-default`` says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import make_settings, service_env, wait_until

from appliance.accounts import service as accounts
from appliance.cli import main
from appliance.db import open_db
from appliance.errors import ConfigError
from appliance.inference import catalog, models
from appliance.knowledge.store import Document, KnowledgeStore

ROOT = Path(__file__).resolve().parents[2]
GB = 1_000_000_000


def test_the_bundled_catalog_pins_what_was_confirmed():
    entries = catalog.read_bundled()
    chat = [e for e in entries.values() if e.kind == "chat"]
    embedding = [e for e in entries.values() if e.kind == "embedding"]
    assert len(chat) >= 4 and len(embedding) >= 2
    assert min(e.params_b for e in chat) <= 1.5 and max(e.params_b for e in chat) >= 14
    for entry in entries.values():
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256), entry.name
        assert re.fullmatch(r"[0-9a-f]{40}|main", entry.revision), entry.name
        assert entry.page.startswith(f"https://huggingface.co/{entry.repo}/blob/{entry.revision}/")
        assert entry.page.endswith(entry.file)
        assert entry.memory_gb * GB > entry.size_bytes  # the file and more
        if entry.kind == "chat":
            assert "q4_k_m" in entry.file.lower()


def test_docs_list_every_catalog_entry_and_how_it_was_confirmed():
    operations = (ROOT / "docs" / "operations.md").read_text()
    for entry in catalog.read_bundled().values():
        assert entry.name in operations
        assert entry.sha256[:12] in operations


def test_an_extra_catalog_in_the_data_dir_adds_and_overrides_entries(tmp_path):
    settings = make_settings(tmp_path / "data")
    settings.paths.models.mkdir(parents=True)
    (settings.paths.models / "catalog.toml").write_text(
        '[models."qwen2.5-7b-instruct-q4_k_m"]\nkind = "chat"\nrepo = "mirror/qwen"\n'
        'file = "q.gguf"\nmemory_gb = 5.7\nlicense = "Apache-2.0"\n'
        '[models.mine]\nkind = "embedding"\nrepo = "me/emb"\nfile = "e.gguf"\n'
        'memory_gb = 0.2\nlicense = "MIT"\n'
    )

    entries = catalog.load(settings)

    assert entries["qwen2.5-7b-instruct-q4_k_m"].repo == "mirror/qwen"
    assert entries["qwen2.5-7b-instruct-q4_k_m"].sha256 == ""  # the hub's metadata verifies
    assert entries["mine"].revision == "main"
    assert "llama-3.2-1b-instruct-q4_k_m" in entries


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('[models.x]\nkind = "chat"\nrepo = "a/b"\nfile = "f.gguf"\nlicense = "MIT"\n', "number"),
        ('[models.x]\nkind = "voice"\nrepo = "a/b"\nfile = "f.gguf"\nlicense = "MIT"\n', "kind"),
        ('[models.x]\nkind = "chat"\nrepo = "ab"\nfile = "f.gguf"\nlicense = "MIT"\n', "OWNER"),
        ('[models.x]\nkind = "chat"\nrepo = "a/b"\nfile = "../f.gguf"\nlicense = "M"\n', ".gguf"),
        ('[models.x]\nkind = "chat"\nrepo = "a/b"\nfile = "f.gguf"\n', "missing license"),
        ('[models."Bad Name"]\nkind = "chat"\n', "the name"),
        ("[models.x\n", "cannot read"),
    ],
)
def test_a_bad_extra_catalog_is_one_clear_error(tmp_path, body, problem):
    settings = make_settings(tmp_path / "data")
    settings.paths.models.mkdir(parents=True)
    (settings.paths.models / "catalog.toml").write_text(body)

    with pytest.raises(ConfigError, match=re.escape(problem)) as caught:
        catalog.load(settings)
    assert "catalog.toml" in str(caught.value)


def gpu(free_gb: float, total_gb: float = 80.0, name: str = "NVIDIA H100 80GB HBM3") -> dict:
    total_mb = int(total_gb * GB / 1024**2)
    return {
        "index": 0,
        "name": name,
        "memory_total_mb": total_mb,
        "memory_used_mb": total_mb - int(free_gb * GB / 1024**2),
        "utilization_percent": 0,
    }


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        (catalog.Machine([gpu(79)], 64 * GB, 16), "qwen2.5-14b-instruct-q4_k_m"),
        (catalog.Machine([gpu(10, 24, "RTX 4090")], 64 * GB, 16), "gemma-2-9b-it-q4_k_m"),
        (catalog.Machine([gpu(7, 8, "RTX 3070")], 64 * GB, 16), "qwen2.5-7b-instruct-q4_k_m"),
        (catalog.Machine([gpu(2, 4, "T400")], 64 * GB, 16), "llama-3.2-1b-instruct-q4_k_m"),
        (catalog.Machine(None, 128 * GB, 32), "qwen2.5-14b-instruct-q4_k_m"),
        (catalog.Machine(None, 32 * GB, 8), "qwen2.5-7b-instruct-q4_k_m"),
        (catalog.Machine(None, 32 * GB, 4), "llama-3.2-3b-instruct-q4_k_m"),
        (catalog.Machine(None, 6 * GB, 16), "llama-3.2-3b-instruct-q4_k_m"),  # RAM-bound
        (catalog.Machine(None, 16 * GB, 2), "llama-3.2-1b-instruct-q4_k_m"),
    ],
)
def test_recommend_picks_the_largest_chat_model_that_fits(machine, expected):
    choice, reason = catalog.recommend(catalog.read_bundled(), machine)

    assert choice is not None and choice.name == expected, reason
    assert f"needs about {choice.memory_gb:g} GB" in reason
    if machine.gpus:
        assert f"{machine.gpus[0]['name']}) has" in reason
    else:
        assert f"{machine.cpu_cores} physical cores" in reason


def test_recommend_says_why_nothing_fits():
    choice, reason = catalog.recommend(catalog.read_bundled(), catalog.Machine(None, 3 * GB, 2))

    assert choice is None
    assert "3.0 GB of RAM available (1.0 GB after 2 GB for the other services)" in reason
    assert "llama-3.2-1b-instruct-q4_k_m, needs 1.6 GB" in reason
    assert "keep the bundled tiny model" in reason


def run_cli(data_dir: Path, *args: str, path: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_recommend_reads_the_gpu_from_nvidia_smi(tmp_path):
    # A stand-in for the NVIDIA driver's tool, answering the query gpu.py makes.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '0, NVIDIA L4, 1200, 23034, 0'\n")
    fake.chmod(0o755)

    done = run_cli(tmp_path / "data", "models", "recommend", path=f"{bin_dir}:/usr/bin:/bin")
    name = run_cli(
        tmp_path / "data", "models", "recommend", "--name-only", path=f"{bin_dir}:/usr/bin:/bin"
    )

    assert done.returncode == 0, done.stderr
    assert "recommended: qwen2.5-14b-instruct-q4_k_m" in done.stdout
    assert "GPU 0 (NVIDIA L4) has 22.9 GB of memory free" in done.stdout
    assert "appliance models pull qwen2.5-14b-instruct-q4_k_m --default" in done.stdout
    assert name.stdout == "qwen2.5-14b-instruct-q4_k_m\n"


# -- set-default ------------------------------------------------------------------------


@pytest.fixture
def two_of_each(tmp_path, models_dir):
    """A data dir with the bundled models and a second chat and embedding model."""
    settings = make_settings(tmp_path / "data")
    registry = models.load_registry(settings)
    registry.directory.mkdir(parents=True)
    for name in ("SmolLM2-135M-Instruct.Q4_1.gguf", "all-MiniLM-L6-v2.f16.gguf"):
        os.link(models_dir / name, registry.directory / name)
    models.register(
        registry,
        "chat-a",
        registry.directory / "SmolLM2-135M-Instruct.Q4_1.gguf",
        kind="chat",
        license="t",
        source="t",
    )
    models.register(
        registry,
        "embed-a",
        registry.directory / "all-MiniLM-L6-v2.f16.gguf",
        kind="embedding",
        license="t",
        source="t",
    )
    for kind, source, copy in (
        ("chat", "SmolLM2-135M-Instruct.Q4_1.gguf", "chat-b.gguf"),
        ("embedding", "all-MiniLM-L6-v2.f16.gguf", "embed-b.gguf"),
    ):
        os.link(models_dir / source, registry.directory / copy)
        models.register(
            registry,
            copy.removesuffix(".gguf"),
            registry.directory / copy,
            kind=kind,
            license="t",
            source="t",
        )
    return settings


def test_set_default_chat_says_a_restart_of_inference_is_all_it_takes(two_of_each, capsys):
    assert (
        main(["models", "set-default", "chat-b", "--data-dir", str(two_of_each.paths.data_dir)])
        == 0
    )

    out = capsys.readouterr().out
    assert "chat-b is now the default chat model" in out
    assert "sudo systemctl restart appliance-inference" in out
    assert "Nothing else needs a restart" in out
    assert "reindex" not in out
    assert models.load_registry(two_of_each).default_chat == "chat-b"


def test_set_default_warns_when_a_setting_pins_another_model(two_of_each, capsys):
    (two_of_each.paths.data_dir / "appliance.toml").write_text(
        '[inference]\nchat_model = "chat-a"\n'
    )

    main(["models", "set-default", "chat-b", "--data-dir", str(two_of_each.paths.data_dir)])

    assert "inference.chat_model = 'chat-a' wins" in capsys.readouterr().out


def test_set_default_embedding_explains_the_reindex_when_documents_are_indexed(
    two_of_each, capsys, clock
):
    data_dir = str(two_of_each.paths.data_dir)
    main(["models", "set-default", "embed-b", "--data-dir", data_dir])
    assert "nothing to re-embed" in capsys.readouterr().out  # no document yet

    db = open_db(two_of_each)
    _, account = accounts.create_user(db, "owner@example.com", clock(), account_name="A")
    store = KnowledgeStore(db)
    store.insert_document(
        Document(
            "doc_1",
            account.id,
            None,
            "a.md",
            "md",
            10,
            "0" * 64,
            "ready",
            None,
            1,
            1,
            "embed-a",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00",
        )
    )
    store.ensure_vectors(384, "embed-a")
    db.close()

    main(["models", "set-default", "embed-b", "--data-dir", data_dir])
    out = capsys.readouterr().out
    assert "1 document(s) embedded with 'embed-a' (384 dimensions)" in out
    assert "appliance kb reindex --wait" in out
    assert "restart" in out

    main(["models", "set-default", "embed-a", "--data-dir", data_dir])
    assert "was built with embed-a: nothing to re-embed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("registered", "refused"), [("embed-b", True), ("all-minilm-l6-v2", False)]
)
def test_kb_reindex_refuses_while_inference_serves_another_embedding_model(
    linked_settings, models_dir, capsys, registered, refused
):
    # The shared inference service serves all-minilm-l6-v2; this data dir's registry has
    # its own embedding model, under the id the test gives it.
    registry = models.load_registry(linked_settings)
    registry.directory.mkdir(parents=True, exist_ok=True)
    os.link(models_dir / "all-MiniLM-L6-v2.f16.gguf", registry.directory / "e.gguf")
    models.register(
        registry,
        registered,
        registry.directory / "e.gguf",
        kind="embedding",
        license="t",
        source="t",
    )

    code = main(["kb", "reindex", "--wait", "--data-dir", str(linked_settings.paths.data_dir)])

    captured = capsys.readouterr()
    if refused:
        assert code == 2
        assert "still serves the embedding model 'all-minilm-l6-v2', not 'embed-b'" in captured.err
        assert "restart it first" in captured.err
        assert "queued" not in captured.out
    else:
        assert code == 0
        assert "queued 0 document(s)" in captured.out


def test_kb_reindex_wait_shows_progress_until_the_worker_is_done(live_kb, linked_settings, clock):
    from appliance.auth import service as auth

    db = open_db(linked_settings)
    owner, account = accounts.create_user(db, "owner@example.com", clock(), account_name="A")
    _, secret = auth.create_key(
        db, user_id=owner.id, account_id=account.id, name="t", scope="manage", now=clock()
    )
    db.close()
    headers = {"Authorization": f"Bearer {secret}"}
    for name in ("a.md", "b.md"):
        text = f"# {name}\n\nThe {name} notes say to water the plants on Tuesdays.\n"
        response = httpx.post(
            f"{live_kb.url}/api/documents",
            files={"file": (name, text.encode())},
            headers=headers,
            timeout=30,
        )
        assert response.status_code == 202, response.text

    def all_ready():
        documents = httpx.get(f"{live_kb.url}/api/documents", headers=headers).json()
        return all(d["status"] == "ready" for d in documents)

    wait_until(all_ready, timeout=60, what="both documents indexed")

    done = subprocess.run(
        [sys.executable, "-m", "appliance", "kb", "reindex", "--wait"],
        capture_output=True,
        text=True,
        env=service_env(linked_settings),
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "queued 2 document(s) for re-embedding; the worker does the rest"
    assert lines[-1] == "re-embedded 2 of 2 document(s), 0 failed, 0 to go"
    assert all_ready()
