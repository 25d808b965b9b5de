"""Options every command shares, so that one option name means one thing on every command.

``output_options`` gives each command ``--quiet`` and ``--verbose``; ``deprecated_alias`` keeps an
old option name working for a while (hidden, one warning line). ``tests/cli/test_vocabulary.py``
walks every command and holds the names to one meaning each.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from tfmq_export.config import SUPPORTED_ACT_BITS, SUPPORTED_WEIGHT_BITS
from tfmq_export.contract import FLOAT_PRECISIONS

__all__ = ["ABITS", "OPENVINO_TARGET_HELP", "TARGET_HELP", "WBITS", "deprecated_alias", "is_verbose", "output_options",
           "precision_option", "replace_deprecated"]

F = TypeVar("F", bound=Callable[..., Any])

#: ``--wbits`` / ``--abits``: the bit widths the deployment targets can express (16 = float, no quantizer).
WBITS = click.Choice(list(SUPPORTED_WEIGHT_BITS))
ABITS = click.Choice(list(SUPPORTED_ACT_BITS))
#: ``--target`` means the same Q/DQ flavour wherever it appears.
TARGET_HELP = ("Q/DQ flavour of the exported UNet: tensorrt (int8, zero point 0, TensorRT's explicit "
               "quantization) or onnxruntime (uint8 + Conv-output Q/DQ so onnxruntime fuses QLinearConv).")
#: what the export commands add: the ``openvino`` target
OPENVINO_TARGET_HELP = (" openvino: int8 as tensorrt, but uint8 zero point 127 on the Linear inputs of an artifact "
                        "calibrated with --linear-act-grid uint8-127 (OpenVINO then runs u8 FullyConnected kernels).")


def precision_option(what: str) -> Callable[[F], F]:
    """``--precision fp16|fp32`` of an export: its default follows ``--target``; ``what`` names the float parts."""
    return click.option("--precision", type=click.Choice(list(FLOAT_PRECISIONS)), default=None,
                        show_default="fp16 for --target tensorrt, fp32 for onnxruntime and openvino",
                        help=f"Type of {what}; the inputs/outputs stay float32.")


_VERBOSE_KEY = "tfmq_export.verbose"


def is_verbose() -> bool:
    """True inside a command run with ``--verbose`` (commands may print more, e.g. resolved settings)."""
    context = click.get_current_context(silent=True)
    return bool(context is not None and context.meta.get(_VERBOSE_KEY))


def _start_verbose(context: click.Context) -> float:
    """INFO logging from the package, and the command's options (defaults resolved) on stderr."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tfmq_export").setLevel(logging.INFO)
    context.meta[_VERBOSE_KEY] = True
    shown = " ".join(f"{key}={value!r}" for key, value in context.params.items() if key not in ("quiet", "verbose"))
    click.echo(f"tfmq-export {context.info_name}: {shown}", err=True)
    return time.perf_counter()


def output_options(fn: F) -> F:
    """Add ``--quiet`` and ``--verbose``; ``quiet`` reaches the command only if it takes one (progress bars)."""
    takes_quiet = "quiet" in inspect.signature(fn).parameters

    @functools.wraps(fn)
    def wrapper(*args: Any, quiet: bool = False, verbose: bool = False, **kwargs: Any) -> Any:
        if quiet and verbose:
            raise click.UsageError("--quiet and --verbose exclude each other")
        if takes_quiet:
            kwargs["quiet"] = quiet
        context = click.get_current_context()
        if not verbose:
            return fn(*args, **kwargs)
        start = _start_verbose(context)
        try:
            return fn(*args, **kwargs)
        finally:
            click.echo(f"tfmq-export {context.info_name}: {time.perf_counter() - start:.1f} s", err=True)

    wrapper = click.option("--verbose", is_flag=True,
                           help="Print the options (defaults resolved) first and the elapsed time last, on stderr, "
                                "and INFO log lines.")(wrapper)
    wrapper = click.option("--quiet", is_flag=True,
                           help="No progress bars and no verbose lines (results and warnings still print).")(wrapper)
    return wrapper  # type: ignore[return-value]


def deprecated_alias(old: str, new: str, **option: Any) -> Callable[[F], F]:
    """A hidden ``old`` option that still works and warns in one line to use ``new`` (same meaning)."""
    return click.option(old, default=None, hidden=True, help=f"Deprecated alias of {new}.", **option)


def replace_deprecated(old: str, new: str, old_value: Any, new_value: Any, new_param: str) -> Any:
    """The value to use: ``new_value``, or ``old_value`` (one warning line) when only the old name was given."""
    if old_value is None or old_value == ():
        return new_value
    context = click.get_current_context()
    if context.get_parameter_source(new_param) is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError(f"{old} is the deprecated name of {new}; give only {new}")
    click.echo(f"Warning: {old} is deprecated, use {new} (same meaning).", err=True)
    return old_value
