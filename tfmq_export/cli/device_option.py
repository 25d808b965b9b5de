"""``--device cpu|cuda|cuda:N``: the one definition, applied by one decorator line per command.

Checked while the command line is parsed, before anything is loaded or written: a malformed value
or a CUDA device that torch cannot see stops the command with one line (exit 1). The command
receives the checked string and passes it on to the library (``tfmq_export.device``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["DEVICE_HELP", "device_option"]

F = TypeVar("F", bound=Callable[..., Any])

DEVICE_HELP = ("Where torch computes: cpu, cuda (the first visible GPU) or cuda:N. The result is written from CPU "
               "tensors; the device is recorded with the timings, not in the settings.")


def _checked(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """The value, or one line (``click.ClickException``, exit 1) when it is malformed or unavailable."""
    from tfmq_export.device import check_device_syntax, resolve_device
    from tfmq_export.errors import TfmqError

    try:
        text = check_device_syntax(value)
        if text != "cpu":  # torch loads only for a GPU request; cpu is always there
            resolve_device(text)
    except TfmqError as exc:
        raise click.ClickException(str(exc)) from None
    return text


def device_option(fn: F) -> F:
    """Add ``--device`` (default ``cpu``) to a command; its function gets ``device: str``."""
    return click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda|cuda:N",
                        callback=_checked, help=DEVICE_HELP)(fn)
