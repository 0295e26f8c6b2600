"""The layers (docs/architecture.md): data flows one way, cocodag -> maxent_train -> oodscore, with the apps on top.

* ``cocodag`` (foundation: dataset builder, shared base, file formats) imports none of the others;
* ``maxent_train`` (trainer, export) never loads ``oodscore``; ``oodscore`` never loads ``maxent_train``;
* ``cocodag_apps`` (the demo, ``predict``, the console scripts) is the only code that imports all three, and no
  package below imports it;
* no package imports a private (``_``-prefixed) module or name of another package.

Checked twice: dynamically (every module of each package imported in a fresh interpreter, then ``sys.modules``
inspected) and statically (every ``import`` statement, including the lazy ones inside functions).
"""
from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cocodag", "maxent_train", "oodscore", "cocodag_apps")
# package -> the packages it must never load (import-time or lazily)
FORBIDDEN = {
    "cocodag": {"maxent_train", "oodscore", "cocodag_apps"},
    "maxent_train": {"oodscore", "cocodag_apps"},
    "oodscore": {"maxent_train", "cocodag_apps"},
    "cocodag_apps": set(),
}


def _modules(package: str) -> list[str]:
    """Every module of ``package`` (pkgutil.walk_packages), ``__main__`` modules excluded (they run a CLI)."""
    pkg = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".")]
    return [n for n in names if n.rsplit(".", 1)[-1] != "__main__"]


_PROBE = """
import importlib, json, sys
names, forbidden = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
loaded_by = {}
for name in names:
    before = {m.split(".")[0] for m in sys.modules}
    importlib.import_module(name)
    new = sorted(({m.split(".")[0] for m in sys.modules} - before) & forbidden)
    if new:
        loaded_by[name] = new
print(json.dumps(loaded_by))
"""


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_every_module_loads_no_higher_layer(package):
    names = _modules(package)
    assert len(names) >= 2, f"walk found no modules in {package}: {names}"
    r = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(names), json.dumps(sorted(FORBIDDEN[package]))],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    loaded_by = json.loads(r.stdout.strip().splitlines()[-1])
    assert loaded_by == {}, f"{package} modules load a higher layer: {loaded_by}"


def test_known_entry_modules_are_walked():
    assert {"cocodag.cli", "cocodag.formats.logits", "cocodag.cli_utils"} <= set(_modules("cocodag"))
    assert {"maxent_train.cli", "maxent_train.export", "maxent_train.train"} <= set(_modules("maxent_train"))
    assert {"oodscore.cli", "oodscore.report", "oodscore.scores"} <= set(_modules("oodscore"))
    assert {"cocodag_apps.cli", "cocodag_apps.demo", "cocodag_apps.predict"} <= set(_modules("cocodag_apps"))


# the layer tests that used to live beside each package (kept: the same assertions)
def test_oodscore_never_imports_maxent_train():
    code = ("import sys, oodscore, oodscore.cli, oodscore.io, oodscore.report, oodscore.metrics, "
            "oodscore.components, oodscore.scores; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'maxent_train']; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_maxent_train_never_imports_oodscore():
    code = ("import sys, maxent_train.export, maxent_train.train, maxent_train.cli; "
            "assert 'oodscore' not in sys.modules, 'oodscore imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------------- static
def _imports(path: Path, root: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import statement in ``path`` (relative ones resolved)."""
    here = list(path.relative_to(root).parts[:-1])      # the package the file's relative imports start from
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module, [a.name for a in node.names]))
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _violations(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            where = path.relative_to(root)
            for line, module, names in _imports(path, root):
                top, *rest = module.split(".")
                if top not in FORBIDDEN or top == package:
                    continue
                if top in FORBIDDEN[package]:
                    found.append(f"{where}:{line}: {package} imports {module} (a higher layer)")
                private = [p for p in rest if _is_private(p)] + [n for n in names if _is_private(n)]
                if private:
                    found.append(f"{where}:{line}: imports private {', '.join(private)} of {module}")
    return found


def test_no_import_of_a_higher_layer_or_of_another_package_private_name():
    violations = _violations()
    assert not violations, "\n".join(violations)


def test_static_check_sees_violations(tmp_path):
    """The static check itself: a lazy import of a higher layer and a private name of another package are found."""
    pkg = tmp_path / "maxent_train"
    pkg.mkdir()
    (pkg / "bad.py").write_text("def f():\n    from oodscore.scores import _private\n    import cocodag._x\n")
    (pkg / "good.py").write_text("from . import bad\nfrom .bad import f\nfrom cocodag.errors import CocodagError\n")
    v = _violations(tmp_path, ("maxent_train",))
    assert any("higher layer" in s for s in v) and any("private _private" in s for s in v)
    assert any("private _x of cocodag._x" in s for s in v), v
    assert len(v) == 3 and not any("good.py" in s for s in v), v
