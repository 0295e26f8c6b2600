"""Shared helpers for the three typer CLIs: our errors become one red `error:` line and exit code 1."""
from __future__ import annotations

import sys
from contextlib import contextmanager

import typer


@contextmanager
def user_errors(*error_types: type[BaseException]):
    """Turn the given error types (default: any ValueError subclass of ours) into a one-line message + exit 1.

    typer.Exit / click exceptions are not caught (they are not in ``error_types``), so a command's own exit passes.
    """
    types = error_types or (ValueError,)
    try:
        yield
    except types as e:  # noqa: PERF203 - only our user-facing errors
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=130) from None


def fail(message: str) -> None:
    """Print one error line and exit 1 (for argument checks done in the CLI layer)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def is_tty() -> bool:
    return sys.stderr.isatty()
