"""The three services, each started inside the data-dir mounts its systemd unit declares
(emulated with a private mount namespace: ``unshare`` + ``mount``, so it needs root), do
their real work together: a sign-in mail, an upload ingested with the real models, a
data export built and downloaded. And each sees and writes only what the unit allows.

systemd itself cannot run here (no init); the emulation reads the options from the unit
files, so a unit that takes away something a service needs fails this test."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import free_port, link_models, service_env, stop_process, wait_until
from test_systemd_units import DATA, paths_of, service

from appliance import mail
from appliance.accounts import service as accounts
from appliance.auth import service as auth

pytestmark = [
    pytest.mark.inference,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None,
        reason="needs root and unshare for a private mount namespace",
    ),
]


def mounts(name: str, data_dir: Path, stage: Path) -> str:
    """Shell commands giving a fresh mount namespace the unit's view of ``data_dir``
    (``ProtectSystem=strict`` emulated for the data dir only)."""
    options = paths_of(service(name))
    local = str(data_dir)

    def real(path: str) -> tuple[str, bool]:
        optional = path.startswith("-")
        return path.lstrip("-").replace(DATA, local, 1), optional

    def guarded(path: str, optional: bool, command: str) -> str:
        return f"if [ -e {shlex.quote(path)} ]; then {command}; fi" if optional else command

    def read_only(path: str) -> str:
        quoted = shlex.quote(path)
        return f"mount --bind {quoted} {quoted} && mount -o remount,bind,ro {quoted}"

    steps = ["set -e"]
    if "TemporaryFileSystem" in options:
        # An empty read-only tmpfs over the data dir, with the allowed paths bound in from
        # a second view of the real data dir (unmounted before the service starts).
        steps.append(f"mount --bind {shlex.quote(local)} {shlex.quote(str(stage))}")
        steps.append(f"mount -t tmpfs -o mode=0700 tmpfs {shlex.quote(local)}")
        for value in options["BindReadOnlyPaths"]:
            path, optional = real(value)
            source = shlex.quote(str(stage / Path(path).relative_to(local)))
            target = shlex.quote(path)
            make = (
                f"mkdir -p {target}"
                if not Path(path).suffix and not path.endswith("_key")
                else f"mkdir -p $(dirname {target}) && touch {target}"
            )
            command = (
                f"{make} && mount --bind {source} {target} && mount -o remount,bind,ro {target}"
            )
            steps.append(f"if [ -e {source} ]; then {command}; fi" if optional else command)
        steps.append(f"umount -l {shlex.quote(str(stage))}")
        steps.append(f"mount -o remount,ro {shlex.quote(local)}")
        return "\n".join(steps)
    if [local] != [real(p)[0] for p in options.get("ReadWritePaths", [])]:
        steps.append(read_only(local))
    for value in options.get("ReadOnlyPaths", []):
        path, optional = real(value)
        steps.append(guarded(path, optional, read_only(path)))
    for value in options.get("InaccessiblePaths", []):
        path, optional = real(value)
        quoted = shlex.quote(path)
        steps.append(guarded(path, optional, f"mount -t tmpfs -o ro,mode=000 tmpfs {quoted}"))
    return "\n".join(steps)


class Sandboxed:
    def __init__(self, name: str, args: list[str], settings, env: dict[str, str], tmp: Path):
        stage = tmp / f"stage-{name}"
        stage.mkdir()
        self.log_path = tmp / f"{name}.log"
        script = mounts(name, settings.paths.data_dir, stage)
        command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "appliance", *args])
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 f"{script}\nexec {command}"],
                env=service_env(settings, **env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def sees(self, path: Path) -> Path:
        """``path`` as this process sees it (its own mount namespace). Resolved here first:
        an absolute symbolic link under /proc/PID/root leads back to this namespace (the
        tests' models directory is one)."""
        return Path(f"/proc/{self.process.pid}/root{path.resolve()}")

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(self.log_path.read_text(errors="replace"))
        return True

    def stop(self) -> None:
        stop_process(self.process)


def answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=1).status_code == 200
    return False


@pytest.fixture
def sandboxed(settings, models_dir, db, clock, tmp_path):
    link_models(settings, models_dir)
    owner, account = accounts.create_user(db, "owner@example.com", clock(), account_name="A")
    _, key = auth.create_key(
        db, user_id=owner.id, account_id=account.id, name="t", scope="manage", now=clock()
    )
    inference_port, web_port = free_port(), free_port()
    env = {
        "APPLIANCE_INFERENCE__PORT": str(inference_port),
        "APPLIANCE_INFERENCE__URL": f"http://127.0.0.1:{inference_port}",
    }
    started = {}
    try:
        started["inference"] = Sandboxed(
            "appliance-inference", ["inference"], settings, env, tmp_path
        )
        health = env["APPLIANCE_INFERENCE__URL"] + "/healthz"
        wait_until(
            lambda: started["inference"].alive() and answers(health),
            timeout=120,
            what="the sandboxed inference service",
        )
        started["worker"] = Sandboxed("appliance-worker", ["worker"], settings, env, tmp_path)
        started["web"] = Sandboxed(
            "appliance-web", ["web", "--port", str(web_port)], settings, env, tmp_path
        )
        url = f"http://127.0.0.1:{web_port}"
        wait_until(
            lambda: started["web"].alive() and answers(url + "/healthz"),
            timeout=60,
            what="the sandboxed web service",
        )
        yield started, url, key
    finally:
        for process in reversed(list(started.values())):
            process.stop()


def test_the_services_work_inside_their_units_mounts_and_see_only_those(sandboxed, settings):
    started, url, key = sandboxed
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    data = settings.paths.data_dir

    # The worker writes the outbox; the web writes both databases.
    assert client.post("/api/auth/code", json={"email": "owner@example.com"}).status_code == 202
    wait_until(lambda: mail.outbox_messages(settings), timeout=60, what="the sign-in mail")

    # The web writes files/; the worker reads it and embeds through inference.
    text = b"# Sandbox\n\nThe espresso machine descales itself every ninety days.\n"
    upload = client.post("/api/documents", files={"file": ("guide.md", text)})
    assert upload.status_code == 202, upload.text
    document = upload.json()["id"]

    def ready():
        status = client.get(f"/api/documents/{document}").json()["status"]
        assert status != "failed", started["worker"].log_path.read_text(errors="replace")
        return status == "ready"

    wait_until(ready, timeout=120, what="the document's ingestion")

    # The worker writes exports/; the web only reads it, for the download.
    export = client.post("/api/me/export").json()["id"]
    wait_until(
        lambda: client.get(f"/api/me/export/{export}").json()["status"] == "ready",
        timeout=120,
        what="the data export",
    )
    download = client.get(f"/api/me/export/{export}/download")
    assert download.status_code == 200 and download.content[:2] == b"PK"

    web, worker, inference = started["web"], started["worker"], started["inference"]
    # What each one sees, from inside its own mount namespace.
    assert list(web.sees(data / "outbox").iterdir()) == []  # there is mail, hidden from it
    assert (web.sees(data / "models") / "registry.json").exists()
    assert not os.access(web.sees(data / "models"), os.W_OK)
    assert not os.access(web.sees(data / "exports"), os.W_OK)
    assert os.access(web.sees(data / "files"), os.W_OK)
    assert list(worker.sees(data / "models").iterdir()) == []
    assert not os.access(worker.sees(data / "secrets"), os.W_OK)
    assert os.access(worker.sees(data / "outbox"), os.W_OK)
    assert not inference.sees(data / "appliance.db").exists()
    assert not inference.sees(data / "files").exists()
    assert sorted(p.name for p in inference.sees(data / "secrets").iterdir()) == ["inference_key"]
    assert (inference.sees(data / "models") / "registry.json").exists()
    assert not os.access(inference.sees(data), os.W_OK)
