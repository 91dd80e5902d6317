"""How often each service died and how: what ``appliance up`` records and systemd reports.

``service_states`` reads ``DATA_DIR/run/services.json`` (which ``appliance up`` rewrites at
every start and death) or ``systemctl show`` (docs/operations.md, "Services that heal");
doctor, ``appliance admin status`` and ``/admin`` show what it returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance import permissions
from appliance.config import Settings

SERVICES = ("inference", "web", "worker")
STATE_FILE = "services.json"
#: ``ExecMainCode`` of ``systemctl show``: how the main process ended (waitid's si_code).
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
SYSTEMCTL_TIMEOUT = 5
EXIT_FIELDS = ("last_exit", "last_exit_at")


@dataclass(frozen=True)
class ServiceState:
    name: str
    state: str  # running, restarting, stopped, failed (gave up), or systemd's ActiveState
    restarts: int
    last_exit: str | None  # "signal SIGSEGV", "exit code 1"
    last_exit_at: str | None  # ISO 8601 (``up``) or systemd's timestamp text


@dataclass(frozen=True)
class Restarts:
    source: str  # "up" or "systemd"
    running: bool  # the supervisor (or systemd) is looking after the services now
    updated_at: str | None
    services: list[ServiceState]

    def public(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_public(cls, data: dict[str, Any]) -> Restarts:
        return cls(**{**data, "services": [ServiceState(**s) for s in data["services"]]})


def describe_exit(returncode: int) -> str:
    """``-11`` → ``signal SIGSEGV``; ``1`` → ``exit code 1`` (``Popen.returncode``)."""
    if returncode >= 0:
        return f"exit code {returncode}"
    with contextlib.suppress(ValueError):
        return f"signal {signal.Signals(-returncode).name}"
    return f"signal {-returncode}"


def state_path(settings: Settings) -> Path:
    return settings.paths.run / STATE_FILE


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace ``path`` with ``state`` in one step: a reader sees the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with permissions.private_file(path) as handle:
        handle.write(json.dumps(state, indent=2).encode())


def service_states(settings: Settings) -> Restarts | None:
    """Restarts per service from the running ``appliance up``, else from systemd, else
    from the state file a stopped ``appliance up`` left; None when there is nothing."""
    recorded = _from_state_file(state_path(settings))
    if recorded is not None and recorded.running:
        return recorded
    return _from_systemd() or recorded


def _from_state_file(path: Path) -> Restarts | None:
    try:
        data = json.loads(path.read_text())
        services = [
            ServiceState(
                name, str(item["state"]), int(item["restarts"]), *map(item.get, EXIT_FIELDS)
            )
            for name, item in data["services"].items()
        ]
        pid = int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return Restarts("up", _alive(pid), data.get("updated_at"), services)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process (the service user's ``appliance up``)
    return True


def _from_systemd() -> Restarts | None:
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    units = [f"appliance-{name}.service" for name in SERVICES]
    properties = "Id,LoadState,ActiveState,NRestarts,ExecMainCode,ExecMainStatus,"
    properties += "ExecMainExitTimestamp,Result"
    try:
        result = subprocess.run(
            [systemctl, "show", f"--property={properties}", *units],
            capture_output=True,
            text=True,
            timeout=SYSTEMCTL_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None  # no systemd here (a container), or no bus
    services = [s for s in map(_unit_state, result.stdout.split("\n\n")) if s is not None]
    return Restarts("systemd", True, None, services) if services else None


def _unit_state(block: str) -> ServiceState | None:
    """One unit's ``systemctl show`` block, or None when the unit is not installed."""
    values = dict(line.partition("=")[::2] for line in block.strip().splitlines())
    if values.get("LoadState") != "loaded":
        return None
    code = _int(values.get("ExecMainCode"))
    status = _int(values.get("ExecMainStatus"))
    last_exit = None
    if code in (CLD_KILLED, CLD_DUMPED):
        last_exit = describe_exit(-status)
    elif code == CLD_EXITED and status:
        last_exit = describe_exit(status)
    elif values.get("Result") not in (None, "", "success"):
        last_exit = values["Result"]  # start-limit-hit, timeout, watchdog…
    return ServiceState(
        name=values.get("Id", "?").removeprefix("appliance-").removesuffix(".service"),
        state=values.get("ActiveState") or "unknown",
        restarts=_int(values.get("NRestarts")),
        last_exit=last_exit,
        last_exit_at=(values.get("ExecMainExitTimestamp") or None) if last_exit else None,
    )


def _int(value: str | None) -> int:
    with contextlib.suppress(TypeError, ValueError):
        return int(value)  # type: ignore[arg-type]
    return 0


def describe(service: ServiceState) -> str:
    """``running, 1 restart (last died: signal SIGSEGV at …)``."""
    text = f"{service.state}, {service.restarts} restart{'' if service.restarts == 1 else 's'}"
    if service.last_exit:
        text += f" (last died: {service.last_exit}"
        text += f" at {service.last_exit_at})" if service.last_exit_at else ")"
    return text


def summary(restarts: Restarts | None) -> list[str]:
    """One line per service, for ``appliance admin status``."""
    if restarts is None:
        return []
    return [f"{service.name}: {describe(service)}" for service in restarts.services]
