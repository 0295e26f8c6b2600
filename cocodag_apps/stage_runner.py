"""Running a pipeline stage's command line in a subprocess, its output in a log (``cocodag demo`` and
``cocodag recipe run``).

A stage is the package's own command line (``python -m cocodag.cli ...``, ``python -m maxent_train ...``,
``python -m oodscore.cli ...``), printed as a user would type it, so a stage's failure, memory and threads stay in its
own process, and a failed stage ends with one line: what failed and the path of the full log.
"""
from __future__ import annotations

import codecs
import io
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from cocodag.errors import CocodagError
from cocodag.progress import ENV as PROGRESS_ENV
from cocodag.progress import use_bars


def module_cmd(module: str, *args: Any) -> list[str]:
    """``python -m MODULE ARGS`` with this interpreter."""
    return [sys.executable, "-m", module, *[str(a) for a in args]]


def shown(cmd: Sequence[str]) -> str:
    """A command as a user would type it (the interpreter by its name)."""
    return " ".join(shlex.quote(c) for c in [Path(cmd[0]).name, *cmd[1:]])


def tee_stderr(cmd: list[str], fh: BinaryIO, env: dict[str, str]) -> int:
    """Run ``cmd`` with stdout to ``fh`` and stderr both to ours (progress) and to ``fh`` (the log)."""
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
    with subprocess.Popen(cmd, stdout=fh, stderr=subprocess.PIPE, env=env) as p:
        stderr = p.stderr
        assert isinstance(stderr, io.BufferedReader)    # stderr=PIPE
        for chunk in iter(lambda: stderr.read1(1 << 16), b""):
            sys.stderr.write(decode(chunk))
            sys.stderr.flush()
            fh.write(chunk)
            fh.flush()
    return p.returncode


def what_failed(text: str) -> str:
    """The one line of a failed stage's output that says what went wrong.

    Our CLIs print one ``error: ...`` line; a bug ends with the traceback's ``ExcType: message`` line. So: the last
    ``error:`` line, else the last non-empty line.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    return lines[-1] if lines else "no output"


def child_env(shown: bool) -> dict[str, str]:
    """The environment of a stage's process; ``shown``: its stderr is passed on to ours.

    A child never sees a terminal (its stderr is a pipe or the log), so its progress would be plain lines
    (:mod:`cocodag.progress`): where ours is a terminal, a shown child is told to draw bars
    (``COCODAG_PROGRESS=bar``); otherwise the variable is left as the user set it (unset: lines in the log).
    """
    # plain Python tracebacks in the logs: rich's boxed ones wrap the exception line at 80 columns
    env = dict(os.environ, PYTHONUNBUFFERED="1", TYPER_STANDARD_TRACEBACK="1")
    # GNU OpenMP threads spin while they wait by default, several times slower when another process holds a core;
    # only the environment of a fresh process can change it (a user's own setting wins)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if shown and use_bars():
        env[PROGRESS_ENV] = "bar"
    return env


def run_logged(cmd: list[str], log: Path, quiet: bool = True, who: str = "demo") -> None:
    """Run one stage command, its output appended to ``log`` (``quiet=False``: stderr shown too).

    Raises
    ------
    CocodagError
        One line: ``{who} stage `...` failed``, the line of its output that says what failed, and the path of the
        full log.
    """
    text = shown(cmd)
    print(f"  $ {text}", file=sys.stderr, flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = child_env(shown=not quiet)
    with open(log, "ab") as fh:
        fh.write(f"\n$ {text}\n".encode())
        fh.flush()
        start = fh.tell()
        if quiet:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
        else:
            rc = tee_stderr(cmd, fh, env)
    if rc != 0:
        with open(log, "rb") as fh:
            fh.seek(start)
            what = what_failed(fh.read().decode(errors="replace"))
        # the words after the last ``-m`` (a launcher such as torchrun has its own), e.g. "maxent_train fit"; the
        # whole command is printed above
        i = len(cmd) - 1 - cmd[::-1].index("-m") if "-m" in cmd else 1
        stage = " ".join(cmd[i + 1:i + 3])
        raise CocodagError(f"{who} stage `{stage}` failed (exit {rc}): {what} (full log: {log})")
