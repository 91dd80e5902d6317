"""Loaded by a child ``appliance`` process (PYTHONPATH) in the egress test: records every
socket connection that leaves the box, through Python's audit hooks, to a file."""

import ipaddress
import os
import sys

_PATH = os.environ.get("APPLIANCE_EGRESS_AUDIT")


def _outside(address) -> str | None:
    """The address when it is neither loopback nor a local socket, else None."""
    if not isinstance(address, tuple):
        return None  # AF_UNIX path
    host = str(address[0])
    if host == "localhost":
        return None
    try:
        return None if ipaddress.ip_address(host.split("%")[0]).is_loopback else repr(address)
    except ValueError:
        return repr(address)  # a name: resolving it would already leave the box


def _hook(event, args):
    if event == "socket.connect":
        outside = _outside(args[1])
        with open(_PATH, "a") as out:
            out.write(f"{'OUTSIDE' if outside else 'loopback'} {outside or args[1]!r}\n")
    elif event == "socket.getaddrinfo" and _outside((_name(args[0]), 0)):
        with open(_PATH, "a") as out:
            out.write(f"OUTSIDE lookup {args[0]!r}\n")


def _name(host) -> str:
    if host is None:
        return "localhost"
    return host.decode() if isinstance(host, bytes) else str(host)


if _PATH:
    with open(_PATH, "a") as out:
        out.write(f"hook installed in pid {os.getpid()}\n")
    sys.addaudithook(_hook)
