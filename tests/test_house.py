"""What a maintainer relies on, checked (docs/architecture.md, "House rules"):

* no module of the four packages over 800 lines (a room that big mixes concerns);
* no import cycle among their modules, counting every import statement — module level, inside functions and under
  ``if TYPE_CHECKING:`` — so a cycle cannot hide behind a lazy import;
* no public function or method of ``cocodag``, ``maxent_train`` or ``oodscore`` with more than 12 parameters (an
  options object instead: ``FitConfig``, ``ExportOptions``, ``EvalOptions``); typer command functions, whose
  parameters are the command line's options, are exempt;
* no tracked file cites the old design document, which is not in the repository (docs/ stands on its own).
"""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cocodag", "maxent_train", "oodscore", "cocodag_apps")
MAX_LINES = 800
MAX_PARAMS = 12


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """The modules of ours that ``path`` imports, from every import statement anywhere in the file."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub when there is one, else a name of pkg
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in modules and t != name}
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle_behind_a_lazy_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_our_modules():
    sources = _sources()
    modules = set(sources)
    graph = {name: _imported_modules(name, path, modules) for name, path in sources.items()}
    assert sum(map(len, graph.values())) > 100, "the import scan found almost nothing: is it broken?"
    assert _cycles(graph) == []


def test_no_module_over_800_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _sources().items()}
    assert len(sizes) > 40
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def _is_command(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A typer command / callback: decorated with ``<app>.command(...)`` / ``<app>.callback(...)``, or (registered
    elsewhere) every parameter declared as a ``typer.Option`` / ``typer.Argument``."""
    for d in fn.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if isinstance(target, ast.Attribute) and target.attr in ("command", "callback"):
            return True
    params = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
    def cli_param(p: ast.arg) -> bool:
        ann = ast.unparse(p.annotation) if p.annotation is not None else ""
        return "typer.Option" in ann or "typer.Argument" in ann or ann.endswith("Context")

    return bool(params) and all(map(cli_param, params))


def _too_many_parameters(path: Path, module: str) -> list[str]:
    out = []

    def visit(body: list[ast.stmt], prefix: str, in_class: bool) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                visit(node.body, f"{prefix}{node.name}.", True)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                public = not node.name.startswith("_") or node.name == "__init__"
                if not public or _is_command(node):
                    continue
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
                if in_class and names and names[0] in ("self", "cls"):
                    names = names[1:]
                if len(names) > MAX_PARAMS:
                    out.append(f"{module}.{prefix}{node.name} ({len(names)})")

    visit(ast.parse(path.read_text(), str(path)).body, "", False)
    return out


def test_parameter_counter_sees_a_long_signature(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f(a, b, c, d, e, f, g, h, i, j, k, l, m): pass\n"
                 "class K:\n    def g(self, a, b, c, d, e, f, g, h, i, j, k, l): pass\n"
                 "@app.command()\ndef cmd(a, b, c, d, e, f, g, h, i, j, k, l, m): pass\n"
                 "def opts(" + ", ".join(f"x{i}: Annotated[int, typer.Option()] = 1" for i in range(13)) + "): pass\n")
    assert _too_many_parameters(f, "m") == ["m.f (13)"]


def test_no_public_function_with_more_than_12_parameters():
    found = []
    for name, path in _sources().items():
        if name.split(".")[0] == "cocodag_apps" or any(p.startswith("_") and p != "__init__"
                                                        for p in name.split(".")):
            continue
        found += _too_many_parameters(path, name)
    assert found == []


def test_no_tracked_file_cites_the_old_design_document():
    needle = "DESIGN" + " §"   # spelled apart so that this file does not match itself
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not files:   # not a git checkout (an sdist): nothing to check
        return
    hits = []
    for f in files:
        p = ROOT / f
        if not p.is_file() or p.suffix in (".pt", ".h5", ".png", ".jpg", ".npz", ".npy", ".gz"):
            continue
        try:
            text = p.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{f}:{i}" for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert hits == []
