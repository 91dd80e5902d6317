"""How the ``appliance`` command's groups are declared: ``appliance GROUP ACTION ...``."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def command(sub, name: str, handler: Callable, help: str, parents, **kwargs):
    """Add the command ``name`` to the subparsers ``sub``, run by ``handler(settings, args)``,
    which returns the exit status (None for 0); returns its parser for arguments."""
    p = sub.add_parser(name, help=help, description=help, parents=list(parents), **kwargs)
    p.set_defaults(handler=handler)
    return p


class Group:
    """A command whose actions each take the common options (``--data-dir``, ``--config``);
    the bare command prints its help and exits 2."""

    def __init__(self, sub, common: argparse.ArgumentParser, name: str, help: str):
        self.common = common
        parser = command(sub, name, lambda s, a: parser.print_help() or 2, help, [common])
        self.actions = parser.add_subparsers(title=f"{name} commands", metavar="ACTION")

    def action(self, name: str, handler: Callable, help: str, **kwargs) -> argparse.ArgumentParser:
        """Add ``ACTION``, run by ``handler`` (see ``command``)."""
        return command(self.actions, name, handler, help, [self.common], **kwargs)
