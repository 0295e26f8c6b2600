"""`oodscore` command line: thin typer shells over library functions."""
from __future__ import annotations

import typer

app = typer.Typer(help="Anomaly scores and exact metrics from saved logits or score maps.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False, add_completion=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
