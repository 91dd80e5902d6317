"""How the ``appliance`` command's groups are declared: ``appliance GROUP ACTION ...``."""

from __future__ import annotations

import argparse
from collections.abc import Callable


class Group:
    """A command whose actions each take the common options (``--data-dir``, ``--config``);
    the bare command prints its help and exits 2."""

    def __init__(self, sub, common: argparse.ArgumentParser, name: str, help: str):
        self.common = common
        parser = sub.add_parser(name, help=help, description=help, parents=[common])
        parser.set_defaults(handler=lambda s, a: parser.print_help() or 2)
        self.actions = parser.add_subparsers(title=f"{name} commands", metavar="ACTION")

    def action(self, name: str, handler: Callable, help: str, **kwargs) -> argparse.ArgumentParser:
        """Add ``ACTION`` run by ``handler(settings, args)``; returns its parser for arguments."""
        p = self.actions.add_parser(
            name, help=help, description=help, parents=[self.common], **kwargs
        )
        p.set_defaults(handler=handler)
        return p
