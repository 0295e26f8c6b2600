"""``cocodag recipe list | show | copy | run``: published methods end to end (:mod:`cocodag_apps.recipes`).

``list`` and ``copy`` read the recipe files only; ``show`` and ``run`` resolve them against the library's option
objects (which loads torch), so :mod:`cocodag_apps.recipes.resolve` is imported when they run.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from cocodag.cli_utils import user_errors

from .recipes import RecipeError, list_recipes, load_recipe, recipe_text

ShowFormat = Literal["toml", "json"]

app = typer.Typer(help="Published methods end to end: list, show, copy and run a recipe.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_show_locals=False)


@app.command("list")
def list_cmd() -> None:
    """The shipped recipes and what each does."""
    with user_errors():
        for name in list_recipes():
            typer.echo(f"{name:<16} {load_recipe(name).get('description', '')}")


@app.command("show")
def show(
    recipe: Annotated[str, typer.Argument(help="A recipe name (`cocodag recipe list`) or a recipe file.")],
    format: Annotated[ShowFormat, typer.Option(help="toml: the file as shipped; json: the resolved recipe, every "
                                                    "value the run would use, defaults included.")] = "toml",
) -> None:
    """Print a recipe: its file, or (``--format json``) every value a run would use."""
    with user_errors():
        if format == "toml":
            typer.echo(recipe_text(recipe)[1], nl=False)
            return
        from .recipes.resolve import resolve

        typer.echo(json.dumps(resolve(recipe), indent=2))


@app.command("copy")
def copy(
    recipe: Annotated[str, typer.Argument(help="A recipe name (`cocodag recipe list`).")],
    file: Annotated[Path, typer.Argument(help="Where to write it (refused when it exists).")],
) -> None:
    """Copy a recipe to a file to edit (then ``show FILE`` / ``run FILE``)."""
    with user_errors():
        _, text = recipe_text(recipe)
        if file.exists():
            raise RecipeError(f"{file}: exists; choose another file or remove it first")
        tmp = file.with_name(file.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        shutil.move(tmp, file)
        typer.echo(f"{recipe} -> {file}", err=True)


@app.command("run")
def run(
    recipe: Annotated[str, typer.Argument(help="A recipe name or a recipe file.")],
    overrides: Annotated[list[str] | None, typer.Argument(
        metavar="[KEY=VALUE]...", help="Overrides: STAGE.OPTION=VALUE (build.crop=64, fit.max_steps=2) or "
                                       "fit.objective_kwargs.NAME=VALUE.")] = None,
    cityscapes: Annotated[str | None, typer.Option(help="Cityscapes root (leftImg8bit/, gtFine/).")] = None,
    coco: Annotated[str | None, typer.Option(help="COCO root (annotations/, train2017/).")] = None,
    init: Annotated[str | None, typer.Option(help="The released checkpoint the recipe starts from.")] = None,
    eval_: Annotated[list[str] | None, typer.Option(
        "--eval", metavar="NAME=PRESET:DIR", help="An evaluation set (repeatable); PRESET from `oodscore datasets "
                                                  "list`.")] = None,
    out: Annotated[str, typer.Option(help="Output folder of the run.")] = "recipe-out",
    device: Annotated[str, typer.Option(help="auto (cuda when available), cpu, cuda or cuda:N; every stage.")
                      ] = "auto",
    launcher: Annotated[str, typer.Option(help="How fit and the exports start: python (one process), torchrun "
                                               "(--nproc processes), or a command prefix to which `-m MODULE ...` "
                                               "is appended.")] = "python",
    nproc: Annotated[int | None, typer.Option(min=1, help="Processes per node with --launcher torchrun.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print every stage's command line; run nothing.")
                       ] = False,
) -> None:
    """Run a recipe's stages (build -> fit -> export -> evaluate ...) through the packages' command lines.

    Resumable: a stage whose output exists and was made from the same settings (OUT/stages/STAGE.json) is skipped;
    one made from other settings is refused. Ends with OUT/results.md and OUT/results.json."""
    from .recipes.plan import RunInputs, build_plan, parse_eval
    from .recipes.resolve import shown

    with user_errors():
        inputs = RunInputs(out=out, cityscapes=cityscapes, coco=coco, init=init,
                           evals=[parse_eval(e) for e in eval_ or []], device=device, launcher=launcher, nproc=nproc)
        plan = build_plan(recipe, overrides or [], inputs)
        if not dry_run:
            from .recipes.run import run_plan

            run_plan(plan, inputs, plan.resolved.get("name", recipe))
            return
        for note in plan.notes:
            print(f"note: {note}", file=sys.stderr)
        for stage, cmd in plan.commands:
            typer.echo(f"# {stage}\n{shown(cmd)}")
