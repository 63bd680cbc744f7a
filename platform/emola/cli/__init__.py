"""The ``emola`` command line: one module per command group."""

from emola.cli.main import main

__all__ = ["main"]
