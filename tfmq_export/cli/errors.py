"""One-line errors for every command: the library's ``TfmqError`` (and unreadable files) -> exit 1."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from tfmq_export.errors import TfmqError

__all__ = ["friendly"]

F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn ``TfmqError``, ``OSError`` and ``MemoryError`` into ``click.ClickException`` (one line, exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TfmqError as exc:
            raise click.ClickException(str(exc)) from None
        except (OSError, MemoryError) as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None

    return wrapper  # type: ignore[return-value]
