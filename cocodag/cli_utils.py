"""Shared helpers of the typer CLIs: our errors become one red ``error:`` line and exit code 1.

Only :class:`cocodag.errors.CocodagError` (the root of every package's error type) is caught, and its whole message
is printed; anything else — a bug, a ``ValueError`` from inside numpy — propagates with its traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from .errors import CocodagError


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn our errors (:class:`CocodagError` and subclasses) into ``error: <message>`` on stderr + exit 1.

    ``typer.Exit`` / click exceptions are not ours and pass through untouched; Ctrl-C exits 130 with one line.
    """
    try:
        yield
    except CocodagError as e:
        fail(str(e).strip() or type(e).__name__)
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=130) from None


def fail(message: str) -> None:
    """Print one error line and exit 1 (for argument checks done in the CLI layer)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def is_tty() -> bool:
    """Whether stderr is a terminal (progress bars are shown only then)."""
    return sys.stderr.isatty()
