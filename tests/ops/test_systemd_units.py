"""The systemd units: parsed and checked for the hardening the operations issue asks for,
and verified by systemd-analyze where it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
SERVICES = ("appliance-web", "appliance-inference", "appliance-worker")
EXEC = "/opt/appliance/venv/bin/appliance"
DATA = "/var/lib/appliance"
#: What each service may do in the data dir (audit 2026-12; docs/operations.md, "What each
#: service may touch"): write, only read, or not see at all. The data dir itself is
#: writable for web and worker because SQLite creates the -wal/-shm files beside each
#: database.
ACCESS = {
    "appliance-web": {
        "ReadWritePaths": [DATA],
        "ReadOnlyPaths": [f"-{DATA}/models", f"-{DATA}/exports"],
        "InaccessiblePaths": [f"-{DATA}/outbox", f"-{DATA}/backups"],
    },
    "appliance-worker": {
        "ReadWritePaths": [DATA],
        "ReadOnlyPaths": [f"{DATA}/secrets"],
        "InaccessiblePaths": [f"-{DATA}/models", f"-{DATA}/backups"],
    },
    "appliance-inference": {
        "TemporaryFileSystem": [f"{DATA}:ro"],
        "BindReadOnlyPaths": [f"{DATA}/models", f"{DATA}/secrets/inference_key"],
        "BindReadOnlyPaths?": [f"-{DATA}/appliance.toml"],
    },
}
SANDBOX_KEYS = (
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "TemporaryFileSystem",
    "BindReadOnlyPaths",
    "BindPaths",
)


def parse(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections → key → every value (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path.name}: {line} outside a section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(name: str) -> dict[str, list[str]]:
    return parse(UNITS / f"{name}.service")["Service"]


def one(unit: dict[str, list[str]], key: str) -> str:
    assert key in unit, f"{key} missing"
    return unit[key][-1]


def test_every_unit_exists_and_the_target_pulls_in_the_services():
    target = parse(UNITS / "appliance.target")
    wants = " ".join(target["Unit"]["Wants"]).split()
    for name in SERVICES:
        assert f"{name}.service" in wants
        unit = parse(UNITS / f"{name}.service")
        assert unit["Unit"]["PartOf"] == ["appliance.target"]
        assert unit["Install"]["WantedBy"] == ["appliance.target"]
    assert target["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize("name", SERVICES)
def test_common_hardening(name):
    unit = service(name)
    assert one(unit, "Type") in ("exec", "notify")
    assert one(unit, "Restart") == "on-failure"
    assert one(unit, "User") == "appliance"
    assert one(unit, "EnvironmentFile") == "/etc/appliance/appliance.env"
    assert one(unit, "ExecStart") == f"{EXEC} {name.removeprefix('appliance-')}"
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "LockPersonality",
        "RestrictSUIDSGID",
        "RestrictNamespaces",
    ):
        assert one(unit, key) == "yes", key
    assert one(unit, "UMask") == "0077"  # the data dir stays private (audit 2026-12)
    assert one(unit, "ProtectSystem") == "strict"
    assert "@system-service" in unit["SystemCallFilter"]
    families = set(one(unit, "RestrictAddressFamilies").split())
    assert families <= {"AF_INET", "AF_INET6", "AF_UNIX"}
    # Only the web service may bind to the privileged ports 443/80, and nothing more.
    if name == "appliance-web":
        assert one(unit, "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
        assert one(unit, "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    else:
        assert one(unit, "CapabilityBoundingSet") == ""
        assert "AmbientCapabilities" not in unit


@pytest.mark.parametrize("name", SERVICES)
def test_restarts_agree_with_appliance_up(name):
    """systemd restarts a dead service as `appliance up` does (appliance/supervisor.py):
    soon, and it gives up on a service that died as often in as short a time."""
    from appliance.supervisor import RestartPolicy

    policy = RestartPolicy()
    unit = parse(UNITS / f"{name}.service")
    assert one(unit["Service"], "Restart") == "on-failure"
    assert policy.first_delay <= int(one(unit["Service"], "RestartSec")) <= policy.max_delay
    # StartLimitBurst counts the first start too: the 5th death is the one not restarted,
    # as in `up` (max_deaths).
    assert int(one(unit["Unit"], "StartLimitBurst")) == policy.max_deaths
    assert int(one(unit["Unit"], "StartLimitIntervalSec")) == policy.window


@pytest.mark.parametrize("name", ["appliance-web", "appliance-worker"])
def test_web_and_worker_deny_writable_executable_memory_and_devices(name):
    unit = service(name)
    assert one(unit, "MemoryDenyWriteExecute") == "yes"
    assert one(unit, "PrivateDevices") == "yes"


def test_inference_reaches_only_loopback_and_the_gpu():
    unit = service("appliance-inference")
    assert unit["IPAddressDeny"] == ["any"]
    assert unit["IPAddressAllow"] == ["localhost"]
    assert one(unit, "DevicePolicy") == "closed"
    devices = [value.split()[0] for value in unit["DeviceAllow"]]
    assert devices and all(
        re.fullmatch(r"(/dev/nvidia[-\w]*|char-nvidia[-\w]*)", d) for d in devices
    )
    assert "/dev/nvidiactl" in devices and "/dev/nvidia-uvm" in devices
    assert "PrivateDevices" not in unit  # it would hide the GPU


def test_worker_stops_like_huey_and_waits_for_its_longest_task():
    from appliance.config import Settings

    unit = service("appliance-worker")
    assert one(unit, "KillSignal") == "SIGINT"
    stop = int(one(unit, "TimeoutStopSec"))
    defaults = Settings()
    longest = (
        defaults.knowledge.extract_timeout_seconds + defaults.inference.request_timeout_seconds
    )
    assert stop > longest


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify(tmp_path):
    # verify also checks that ExecStart exists: point it at this checkout's venv.
    for unit in UNITS.iterdir():
        text = unit.read_text().replace(EXEC, str(Path(sys.executable).parent / "appliance"))
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *sorted(map(str, tmp_path.iterdir()))],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "appliance" not in result.stderr, result.stderr


def test_backup_runs_nightly_offline_and_prunes():
    unit = service("appliance-backup")
    assert one(unit, "Type") == "oneshot"
    assert unit["ExecStart"] == [
        f"{EXEC} backup /var/lib/appliance/backups",
        f"{EXEC} backup --prune /var/lib/appliance/backups",
    ]
    assert one(unit, "PrivateNetwork") == "yes"
    assert one(unit, "MemoryDenyWriteExecute") == "yes"
    assert one(unit, "User") == "appliance"
    assert one(unit, "ProtectSystem") == "strict"
    timer = parse(UNITS / "appliance-backup.timer")
    assert timer["Timer"]["OnCalendar"] and timer["Timer"]["Persistent"] == ["true"]


def paths_of(unit: dict[str, list[str]]) -> dict[str, list[str]]:
    """The unit's file-system options, each key's values split into single paths."""
    return {
        key: [path for value in unit[key] for path in value.split()]
        for key in SANDBOX_KEYS
        if key in unit
    }


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_writes_only_what_it_needs(name):
    expected = {key.rstrip("?"): [] for key in ACCESS[name]}
    for key, paths in ACCESS[name].items():
        expected[key.rstrip("?")] += paths
    assert paths_of(service(name)) == expected


def test_inference_has_no_database_and_writes_nothing_in_the_data_dir():
    unit = paths_of(service("appliance-inference"))
    assert "ReadWritePaths" not in unit
    assert unit["TemporaryFileSystem"] == [f"{DATA}:ro"]
    visible = {path.lstrip("-") for path in unit["BindReadOnlyPaths"]}
    assert not any(path.endswith(".db") for path in visible)
    assert visible == {f"{DATA}/models", f"{DATA}/secrets/inference_key", f"{DATA}/appliance.toml"}


def test_the_access_table_is_in_the_operations_guide():
    guide = (ROOT / "docs" / "operations.md").read_text()
    section = guide.split("### What each service may touch", 1)[1].split("\n## ", 1)[0]
    for name in SERVICES:
        assert f"`{name}`" in section
    for key in ("ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem"):
        assert key in section
