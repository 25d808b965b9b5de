"""The ``tfmq-export`` command line: one thin click module per command.

Commands only parse options, call the library and print. Every command exits 0 on success, 2 on
bad usage (click), and 1 with one line on bad input: the library raises ``TfmqError`` and
``friendly`` turns it into ``click.ClickException``.
"""

from __future__ import annotations

from tfmq_export.cli.app import cli, main

__all__ = ["cli", "main"]
