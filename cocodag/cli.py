"""`cocodag` command line of the dataset builder: thin typer shells over library functions.

The installed ``cocodag`` console script is :func:`cocodag_apps.cli.cocodag_main`: these commands plus the
whole-pipeline ``demo``, which lives in the top layer because it drives all three packages. This module never
imports that layer; ``python -m cocodag.cli`` runs the builder's commands alone.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import typer

from .cli_build import build, inspect_cmd, verify
from .cli_demo import demo_data

HELP = "COCO-DAG dataset builder: demo-data, build, verify, inspect."

# CLI name -> command function, in the order `--help` lists them.
COMMANDS: dict[str, Callable[..., None]] = {
    "demo-data": demo_data,
    "build": build,
    "verify": verify,
    "inspect": inspect_cmd,
}


def create_app(commands: Mapping[str, Callable[..., None]] = COMMANDS) -> typer.Typer:
    """A fresh typer app with ``commands`` (CLI name -> function) registered under their names."""
    app = typer.Typer(help=HELP, no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=False)

    @app.callback()
    def _root() -> None:
        """COCO-DAG dataset builder: demo-data, build, verify, inspect."""

    for name, fn in commands.items():
        app.command(name)(fn)
    return app


app = create_app()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
