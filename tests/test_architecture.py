"""The package's import rules (see ``docs/architecture.md``): which package may import which, no cycle
between packages, and a light ``monai_im.methods``.

Every module under ``monai_im/`` is parsed (not imported) and each of its ``monai_im`` imports is checked:
module-level imports, imports inside functions, and imports under ``if TYPE_CHECKING:`` alike (the table
points downward only, so a type-only import needs no exception: a lower package that names a higher
one's type is a dependency the wrong way round all the same).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "monai_im"
DOC = REPO / "docs" / "architecture.md"

#: the base modules: they import no other part of the package (``monai_im`` is the package's ``__init__``)
BASE = ("monai_im", "constants", "io", "utils")
#: the leaves: building blocks on the base only
LEAVES = ("transforms", "losses", "metrics", "networks", "visualize")

#: package -> the packages it may import (besides itself). The one table of the rules; the table of
#: ``docs/architecture.md`` mirrors it (see ``test_documented_table_is_the_tested_one``).
ALLOWED: dict[str, frozenset[str]] = {
    **{name: frozenset() for name in BASE},
    **{name: frozenset(BASE) for name in LEAVES},
    "runtime": frozenset(BASE + LEAVES),
    "data": frozenset(BASE + LEAVES + ("runtime",)),
    "datasets": frozenset(BASE + LEAVES + ("runtime", "data")),
    "methods": frozenset(BASE + LEAVES + ("runtime", "data")),
    "selftrain": frozenset(BASE + LEAVES + ("runtime", "data", "methods")),
    "handlers": frozenset(BASE + LEAVES + ("runtime", "data", "methods", "selftrain")),
    "apps": frozenset(BASE + LEAVES + ("runtime", "data", "methods", "selftrain", "handlers")),
    "bundle": frozenset(
        BASE + LEAVES + ("runtime", "data", "datasets", "methods", "selftrain", "handlers", "apps")
    ),
}


@dataclass(frozen=True)
class Import:
    """One ``monai_im`` import of a module: where it is, and the package it reaches."""

    file: Path
    line: int
    target: str  # the imported module, e.g. ``monai_im.selftrain.study``
    package: str  # its package (a key of ALLOWED)
    type_only: bool

    def __str__(self) -> str:
        where = self.file.relative_to(REPO).as_posix() if self.file.is_relative_to(REPO) else str(self.file)
        kind = " (under TYPE_CHECKING)" if self.type_only else ""
        return f"{where}:{self.line} imports {self.target}{kind}"


def module_name(path: Path, root: Path = REPO) -> str:
    """``monai_im/selftrain/study.py`` -> ``monai_im.selftrain.study`` (a package's ``__init__`` -> the package)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """The package of a ``monai_im`` module: its first part below ``monai_im`` (``monai_im`` itself: the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "monai_im"


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers of the statements inside ``if TYPE_CHECKING:`` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: Path, root: Path = REPO) -> list[Import]:
    """The ``monai_im`` imports anywhere in the module ``path`` under ``root`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    own = module_name(path, root)
    base = own.split(".") if path.name == "__init__.py" else own.split(".")[:-1]
    type_only = _type_checking_lines(tree)
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                module = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from monai_im import selftrain`` imports the package selftrain, not the root
            targets = (
                [f"{module}.{alias.name}" if alias.name in ALLOWED else module for alias in node.names]
                if module == "monai_im"
                else [module]
            )
        else:
            continue
        for target in targets:
            if target == "monai_im" or target.startswith("monai_im."):
                found.append(Import(path, node.lineno, target, package_of(target), node.lineno in type_only))
    return found


def all_imports() -> dict[str, list[Import]]:
    """Package -> the imports of other packages made by its modules."""
    out: dict[str, list[Import]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = package_of(module_name(path))
        out.setdefault(source, [])
        out[source] += [i for i in imports_of(path) if i.package != source]
    return out


def test_every_package_is_in_the_table():
    assert set(all_imports()) <= set(ALLOWED), (
        f"packages missing from ALLOWED: {set(all_imports()) - set(ALLOWED)}"
    )


def test_packages_import_only_what_the_table_allows():
    bad = [
        f"{imp}: package '{source}' may not import '{imp.package}' (allowed: {sorted(ALLOWED[source]) or 'nothing'})"
        for source, imports in all_imports().items()
        for imp in imports
        if imp.package not in ALLOWED.get(source, frozenset())
    ]
    assert not bad, "imports against docs/architecture.md:\n" + "\n".join(bad)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_cycle_between_packages():
    imports = all_imports()
    graph = {source: {i.package for i in found} for source, found in imports.items()}
    cycle = _find_cycle(graph)
    if cycle is not None:
        steps = []
        for a, b in zip(cycle, cycle[1:]):
            first = next(i for i in imports[a] if i.package == b)
            steps.append(f"{a} -> {b}: {first}")
        pytest.fail("import cycle between packages:\n" + "\n".join(steps))


def test_allowed_table_has_no_cycle():
    assert _find_cycle({k: set(v) for k, v in ALLOWED.items()}) is None


def test_cycle_finder_finds_a_cycle_and_the_checker_a_bad_import(tmp_path):
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
    # the parser sees function-level, relative and TYPE_CHECKING imports
    fake = tmp_path / "monai_im" / "methods" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from monai_im.selftrain.study import SelfTrainingStudy\n"
        "def f():\n    from ..handlers import mlflow_handler\n    import monai_im.apps.suggest\n"
        "from . import base\n"
    )
    found = {(i.line, i.target, i.type_only) for i in imports_of(fake, root=tmp_path)}
    assert found == {
        (3, "monai_im.selftrain.study", True),
        (5, "monai_im.handlers", False),
        (6, "monai_im.apps.suggest", False),
        (7, "monai_im.methods", False),
    }


def _documented_table() -> dict[str, frozenset[str]]:
    """The rows ``| `package` | `a`, `b` |`` of the table under the heading "Allowed imports" of the doc."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Allowed imports", 1)[1].split("\n## ", 1)[0]
    table: dict[str, frozenset[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and (m := re.fullmatch(r"`([\w.]+)`", cells[0])):
            name = m.group(1).removeprefix("monai_im.") if m.group(1) != "monai_im" else "monai_im"
            table[name] = frozenset(re.findall(r"`([\w]+)`", cells[1]))
    return table


def test_documented_table_is_the_tested_one():
    documented = _documented_table()
    assert documented, f"{DOC}: no table under '## Allowed imports'"
    differences = {
        name: {"doc": sorted(documented.get(name, ())), "test": sorted(ALLOWED.get(name, ()))}
        for name in set(documented) | set(ALLOWED)
        if documented.get(name) != ALLOWED.get(name)
    }
    assert not differences, "docs/architecture.md and ALLOWED differ:\n" + json.dumps(differences, indent=1)


def test_importing_the_methods_loads_no_higher_wing_and_no_mlflow():
    """``import monai_im.methods`` (a method in a notebook, a bundle's worker) costs no tracking, no study loop,
    no applications and no dataset generators; MLflow modules that ``import monai`` itself loads are allowed."""
    code = (
        "import json, sys\n"
        "import monai\n"
        "before = set(sys.modules)\n"
        "import monai_im.methods\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=True,
        timeout=300,
    )
    new = json.loads(out.stdout.strip().splitlines()[-1])
    assert "monai_im.methods" in new  # the measure is of this package, not of another copy
    forbidden = ("monai_im.handlers", "monai_im.datasets", "monai_im.apps", "monai_im.selftrain")
    loaded = [m for m in new if m.startswith(forbidden) or m == "mlflow" or m.startswith("mlflow.")]
    assert not loaded, f"import monai_im.methods loads {loaded}"
