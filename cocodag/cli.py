"""`cocodag` command line: thin typer shells over library functions."""
from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="COCO-DAG dataset builder: demo-data, build, verify, inspect.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False, add_completion=False)


@app.callback()
def _root() -> None:
    """COCO-DAG dataset builder: demo-data, build, verify, inspect."""


# Command modules: each defines plain typer command functions; they are registered here under their CLI names.
_COMMANDS = {
    "cocodag.cli_demo": {"demo-data": "demo_data"},
    "cocodag.demo": {"demo": "demo_cmd"},
    "cocodag.cli_build": {"build": "build", "verify": "verify", "inspect": "inspect_cmd"},
}
for _mod, _cmds in _COMMANDS.items():
    try:
        _m = importlib.import_module(_mod)
    except ModuleNotFoundError as _e:  # during parallel development a command module may not exist yet
        if _e.name != _mod:
            raise
        continue
    for _name, _fn in _cmds.items():
        if hasattr(_m, _fn):
            app.command(_name)(getattr(_m, _fn))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
