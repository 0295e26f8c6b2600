"""The installed console scripts (``pip install -e .``): commands and options as users know them, and how errors reach
the user — ours as exactly one ``error:`` line (exit 1), a bug (any other exception) as a traceback.

Each test runs the real script file from the environment's ``bin/`` in a subprocess; it skips when not installed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str) -> Path:
    """The installed console script ``name`` of this environment (skip the test when it is absent)."""
    here = Path(sys.executable).parent / name
    found = here if here.is_file() else (Path(p) if (p := shutil.which(name)) else None)
    if found is None:
        pytest.skip(f"console script {name!r} not installed (run: pip install -e .)")
    return found


def _env(columns: int = 200) -> dict[str, str]:
    return dict(os.environ, COLUMNS=str(columns), NO_COLOR="1", TERM="dumb", PYTHONUNBUFFERED="1")


def _run(args: list, columns: int = 200, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=_env(columns), timeout=timeout,
                          cwd=ROOT)


HELP_CASES = [
    (("cocodag", "--help"), ["demo-data", "demo", "build", "verify", "inspect"]),
    (("cocodag", "demo", "--help"), ["--frames", "--anomaly-frames", "--frame-size", "--steps", "--seeds",
                                     "--baseline", "--baseline-steps", "--mc-samples", "--lr",
                                     "--embedding-img-interval", "--device", "--workers", "--no-progress"]),
    (("cocodag", "build", "--help"), ["--cityscapes", "--coco", "--out", "--crop", "--workers", "--seed",
                                      "--shard-size", "--shard-range", "--cityscapes-crops-per-frame",
                                      "--compression", "--skip-bad"]),
    (("maxent-train", "--help"), ["fit", "export", "models", "miou", "predict"]),
    (("maxent-train", "predict", "--help"), ["--checkpoint", "--out", "--method", "--sml-stats", "--threshold",
                                             "--threshold-from", "--threshold-kind", "--window", "--stride",
                                             "--save-scores", "--device", "--no-progress"]),
    (("maxent-train", "fit", "--help"), ["--data", "--model", "--out", "--init", "--optim-target", "--lambda",
                                         "--embedding-img-interval", "--coco-fraction", "--resume", "--max-steps",
                                         "--keep-optimizer", "--config"]),
    (("oodscore", "evaluate", "--help"), ["--logits", "--scores", "--dataset", "--method", "--sml-stats",
                                          "--oodmc-model", "--components", "--out"]),
]


@pytest.mark.parametrize("argv, expected", HELP_CASES, ids=[" ".join(a) for a, _ in HELP_CASES])
def test_help_lists_commands_and_options(argv, expected):
    r = _run([_script(argv[0]), *argv[1:]])
    assert r.returncode == 0, r.stdout + r.stderr
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", r.stdout))
    commands = set(re.findall(r"(?m)^\W*([a-z][a-z0-9-]*)\s{2,}", r.stdout))    # first word of a command row
    missing = [w for w in expected if w not in (options if w.startswith("-") else commands)]
    assert not missing, f"{' '.join(argv)}: {missing} not listed in\n{r.stdout}"


def test_lower_layers_alone_keep_their_module_entry_points():
    """``python -m maxent_train`` (torchrun) and ``python -m cocodag.cli`` (the demo's stages) still work,
    without the top-layer apps."""
    r = _run([sys.executable, "-m", "maxent_train", "--help"])
    assert r.returncode == 0 and "fit" in r.stdout and "export" in r.stdout and "predict" not in r.stdout, r.stderr
    r = _run([sys.executable, "-m", "cocodag.cli", "--help"])
    assert r.returncode == 0 and "build" in r.stdout and "demo-data" in r.stdout, r.stderr
    assert not re.search(r"(?m)^\W*demo\s", r.stdout), r.stdout
    r = _run([sys.executable, "-m", "cocodag_apps", "cocodag", "demo", "--help"])
    assert r.returncode == 0 and "--baseline" in r.stdout, r.stderr


def _through_script(script: Path, argv: list[str], patch: str, columns: int = 200) -> subprocess.CompletedProcess:
    """Run the installed ``script`` with ``argv`` after executing ``patch`` (Python) in the same process."""
    code = "\n".join([
        "import runpy, sys",
        patch,
        f"sys.argv = {[str(script), *argv]!r}",
        f"runpy.run_path({str(script)!r}, run_name='__main__')",
    ])
    return _run([sys.executable, "-c", code], columns=columns)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("script, argv, target", [
    ("cocodag", ["verify", "."], "cocodag.verify.verify_dataset"),
    ("maxent-train", ["predict", "x.png", "--checkpoint", "c.pt", "--out", "o"],
     "cocodag_apps.predict.predict_images"),
])
def test_a_bug_reaches_the_user_as_a_traceback(script, argv, target):
    """A ValueError raised inside library code (not one of our errors) is a bug: traceback, no ``error:`` line."""
    module, name = target.rsplit(".", 1)
    patch = (f"import {module}\n"
             f"def _boom(*a, **k):\n    raise ValueError('boom from numpy')\n"
             f"{module}.{name} = _boom")
    r = _through_script(_script(script), argv, patch)
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "boom from numpy" in r.stderr, r.stderr
    assert not _error_lines(r.stderr), r.stderr


def test_our_error_is_one_whole_line_exit_1(tmp_path):
    missing = tmp_path / "no" / "such" / "dataset"
    r = _run([_script("cocodag"), "verify", missing])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0], r.stderr


def test_cocodag_error_with_a_long_path_stays_whole(tmp_path):
    """A message naming a long path is printed whole on one line (no wrapping at the terminal width, no cut), and
    a multi-line message is folded into one line by CocodagError itself."""
    path = tmp_path.joinpath(*[f"folder-{i:02d}-with-a-long-name" for i in range(8)], "dag-00003.h5")
    message = f"{path}: sha256 differs from manifest\nrebuild with --shard-range 3:4"
    patch = ("import cocodag.verify\n"
             "from cocodag.errors import CocodagError\n"
             f"def _bad(*a, **k):\n    raise CocodagError({message!r})\n"
             "cocodag.verify.verify_dataset = _bad")
    r = _through_script(_script("cocodag"), ["verify", str(tmp_path)], patch, columns=80)
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {path}: sha256 differs from manifest; rebuild with --shard-range 3:4"], r.stderr
