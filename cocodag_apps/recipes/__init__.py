"""Recipes: a published method end to end, one TOML file each (package data), read with the standard library.

A recipe names the released checkpoint it starts from, the options of each stage (``build``, ``fit``, ``export``,
``evaluate``, and ``meta_classify`` for meta-ood) under the stage's command-line option names (dashes as
underscores), the objective's parameters under ``fit.objective_kwargs``, the evaluation sets it was published on,
and the source of every published value (``sources``) with what our pipeline uses instead where a value cannot apply
(``notes``). A recipe of several models (the demo's) lists them as ``[[runs]]``, each with its own stage tables over
the recipe's; ``docs/formats.md`` §10 gives every key. :func:`list_recipes` / :func:`load_recipe` read them (cheap:
no torch); :mod:`cocodag_apps.recipes.resolve` fills in every default and applies ``STAGE.OPTION=VALUE`` overrides.
"""
from __future__ import annotations

import difflib
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from cocodag.errors import CocodagError

if sys.version_info >= (3, 11):
    import tomllib

#: the shipped recipe files: ``<name>.toml`` in this package
RECIPE_FILES = resources.files(__name__)
#: the tables of a recipe file that hold a stage's options, in the order a run executes them (``world``,
#: ``baseline``, ``miou`` and ``compare`` are the demo's; ``sml_stats`` / ``oodmc_export`` / ``fit_oodmc`` are the
#: statistics and classifier fits that the scores sml, vde and oodmc need)
STAGES = ("world", "build", "baseline", "miou", "fit", "sml_stats", "oodmc_export", "fit_oodmc", "export",
          "evaluate", "meta_classify", "compare")
#: the stages a ``[[runs]]`` entry may set for itself (over the recipe's own table of that stage)
RUN_STAGES = ("fit", "sml_stats", "oodmc_export", "fit_oodmc", "export", "evaluate", "meta_classify")
#: the other top-level keys a recipe file may hold
META_KEYS = ("name", "description", "paper", "checkpoint", "eval_sets", "sources", "notes", "runs", "seeds",
             "layout", "report")
#: the keys of a ``[[runs]]`` entry besides its stages
RUN_KEYS = ("name", "seeds", "description")
#: the keys of ``[layout]``: where a run's outputs go, relative to --out ({run}: the model's name, NAME or NAME-sK;
#: {set}: the evaluation set's name)
LAYOUT_KEYS = ("run", "logits", "report", "meta", "compare")


class RecipeError(CocodagError):
    """A recipe that does not exist or does not parse, an unknown key, a value of the wrong type (one line)."""


def close_matches(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """``"; did you mean a or b?"`` (difflib), or the whole list when nothing is close."""
    near = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    if near:
        return f"; did you mean {' or '.join(near)}?"
    return f"; known: {', '.join(sorted(choices))}"


def list_recipes() -> list[str]:
    """The names of the shipped recipes, sorted."""
    return sorted(p.name[: -len(".toml")] for p in RECIPE_FILES.iterdir() if p.name.endswith(".toml"))


def recipe_text(name_or_path: str | Path) -> tuple[str, str]:
    """``(name, TOML text)`` of a shipped recipe (by name) or of a recipe file (a path ending in ``.toml``)."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise RecipeError(f"recipe file {path}: does not exist")
        return path.stem, path.read_text(encoding="utf-8")
    name = str(name_or_path)
    names = list_recipes()
    if name not in names:
        raise RecipeError(f"unknown recipe {name!r}{close_matches(name, names)}")
    return name, (RECIPE_FILES / f"{name}.toml").read_text(encoding="utf-8")


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """The recipe as read from its file (no defaults filled in), its top-level keys checked.

    Raises
    ------
    RecipeError
        Unknown recipe (with close matches), unreadable TOML, an unknown top-level key.
    """
    name, text = recipe_text(name_or_path)
    doc = _parse_toml(text, str(name_or_path))
    known = (*META_KEYS, *STAGES)
    for key, value in doc.items():
        if key not in known:
            raise RecipeError(f"recipe {name_or_path}: unknown key {key!r}{close_matches(key, known)}")
        if key in STAGES and not isinstance(value, dict):
            raise RecipeError(f"recipe {name_or_path}: [{key}] must be a table of options")
    _check_runs(doc, str(name_or_path))
    for key in doc.get("layout", {}):
        if key not in LAYOUT_KEYS:
            raise RecipeError(f"recipe {name_or_path}: unknown key layout.{key}{close_matches(key, LAYOUT_KEYS)}")
    doc.setdefault("name", name)
    return doc


def _check_runs(doc: dict[str, Any], what: str) -> None:
    """``[[runs]]``: a list of tables, each with a unique ``name`` and known keys; a stage is a table of options or
    ``false`` (``fit = false``: the run's model is the recipe's starting model, not trained)."""
    runs = doc.get("runs", [])
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise RecipeError(f"recipe {what}: runs must be an array of tables ([[runs]])")
    seen: set[str] = set()
    for run in runs:
        name = run.get("name")
        if not isinstance(name, str) or not name or any(c in name for c in "/.\\"):
            raise RecipeError(f"recipe {what}: every [[runs]] entry needs a name, a folder name without '/' or '.' "
                              f"(got {name!r})")
        if name in seen:
            raise RecipeError(f"recipe {what}: two [[runs]] entries are named {name!r}")
        seen.add(name)
        for key, value in run.items():
            if key not in (*RUN_KEYS, *RUN_STAGES):
                raise RecipeError(f"recipe {what}: unknown key runs.{name}.{key}"
                                  f"{close_matches(key, (*RUN_KEYS, *RUN_STAGES))}")
            if key in RUN_STAGES and not (isinstance(value, dict) or value is False):
                raise RecipeError(f"recipe {what}: runs.{name}.{key} must be a table of options or false")


def _parse_toml(text: str, what: str) -> dict[str, Any]:
    """The same rule as ``maxent-train fit --config run.toml`` (``maxent_train.config``): tomllib, Python 3.11+."""
    if sys.version_info >= (3, 11):
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise RecipeError(f"recipe {what}: cannot parse ({str(e).splitlines()[0]})") from None
    raise RecipeError("reading recipes needs Python 3.11 or later (tomllib)")
