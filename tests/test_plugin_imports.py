"""What plugins may import from core is declared: ``pragma_core``'s top-level names and :mod:`pragma_core.pluginkit`.

Every source file of every plugin in this repository (and of the example
hook plugin) is parsed with :mod:`ast`; an import of any other
``pragma_core.*`` module, of a name neither of the two exports, or of a
private name fails, naming the file and line. The plugin kit itself is
checked too: what type checkers see of it is what it exports at run time.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import pragma_core
from pragma_core import pluginkit

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SOURCES = sorted([*ROOT.glob("plugins/*/src"), ROOT / "examples" / "pragma-audit" / "src"])
ALLOWED = {"pragma_core": frozenset(pragma_core.__all__), "pragma_core.pluginkit": frozenset(pluginkit.__all__)}

#: Imports of a module another change is rewriting at the moment; each must still be there
#: (a stale entry fails too), and goes once that module imports only what is declared.
PENDING: dict[str, set[str]] = {}


def plugin_files() -> list[Path]:
    return sorted(path for src in PLUGIN_SOURCES for path in src.rglob("*.py"))


def short(path: Path) -> str:
    """``pragma_kvm_rocks/driver.py``: the path inside its ``src``."""
    return next(path.relative_to(src).as_posix() for src in PLUGIN_SOURCES if src in path.parents)


def core_imports(path: Path) -> Iterator[tuple[int, str, str]]:
    """``(line, module, name)`` for every use of ``pragma_core`` in ``path``: imports and attribute access."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "pragma_core":
            for alias in node.names:
                yield node.lineno, node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pragma_core":
                    module, _, name = alias.name.rpartition(".")
                    if module:
                        yield node.lineno, module, name
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pragma_core":
            yield node.lineno, "pragma_core", node.attr


def problem(module: str, name: str) -> str | None:
    """Why importing ``name`` from ``module`` is not allowed, or ``None``."""
    if module not in ALLOWED:
        return f"imports {module}.{name}: only pragma_core and pragma_core.pluginkit are for plugins"
    if name.startswith("_"):
        return f"imports the private name {module}.{name}"
    if name not in ALLOWED[module]:
        return f"imports {module}.{name}, which {module} does not export"
    return None


def test_there_are_plugin_sources_to_check() -> None:
    names = {short(p).split("/")[0] for p in plugin_files()}
    assert {"pragma_kvm_rocks", "pragma_cloudstack", "pragma_repo_clonezilla", "pragma_audit"} <= names


@pytest.mark.parametrize("path", plugin_files(), ids=short)
def test_a_plugin_imports_only_the_declared_core_names(path: Path) -> None:
    pending = PENDING.get(short(path), set())
    found = []
    used = set()
    for line, module, name in core_imports(path):
        why = problem(module, name)
        if why is None:
            continue
        if f"{module}.{name}" in pending:
            used.add(f"{module}.{name}")
            continue
        found.append(f"{short(path)} line {line}: {why}")
    assert found == []
    assert used == pending, f"no longer imported, remove from PENDING: {sorted(pending - used)}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from pragma_core.config import build_settings\n", "only pragma_core and pragma_core.pluginkit"),
        ("import pragma_core.http\n", "imports pragma_core.http"),
        ("from pragma_core import _EXPORTS\n", "private name pragma_core._EXPORTS"),
        ("from pragma_core.pluginkit import _EXPORTS\n", "private name pragma_core.pluginkit._EXPORTS"),
        ("from pragma_core import load_site_config\n", "pragma_core does not export"),
        ("import pragma_core\npragma_core.plugins.claims('x')\n", "pragma_core.plugins, which pragma_core does not export"),
        ("def f():\n    from pragma_core.staging import Stager\n", "imports pragma_core.staging.Stager"),
    ],
)
def test_the_check_refuses_every_undeclared_import(tmp_path: Path, source: str, expected: str) -> None:
    path = tmp_path / "plugin.py"
    path.write_text(source)
    problems = [why for _, module, name in core_imports(path) if (why := problem(module, name))]
    assert len(problems) == 1 and expected in problems[0]


def test_the_check_lets_declared_imports_through(tmp_path: Path) -> None:
    path = tmp_path / "plugin.py"
    path.write_text(
        "import pragma_core\nfrom pragma_core import Driver, DriverError, hookimpl\n"
        "from pragma_core.pluginkit import HttpClient, run_parallel, setting\nx = pragma_core.Allocation\n"
    )
    assert [problem(m, n) for _, m, n in core_imports(path)] == [None] * 7


def test_every_name_of_the_plugin_kit_resolves() -> None:
    for name in pluginkit.__all__:
        module, attribute = pluginkit._EXPORTS[name]
        assert getattr(pluginkit, name) is getattr(importlib.import_module(module), attribute), name


def test_what_type_checkers_see_of_the_plugin_kit_is_what_it_exports() -> None:
    tree = ast.parse(Path(pluginkit.__file__).read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names:
            assert alias.asname is not None, f"{alias.name}: re-export it as itself (`x as x`)"
            seen[alias.asname] = (f"pragma_core.{node.module}", alias.name)
    assert seen == pluginkit._EXPORTS


def test_the_plugin_kit_imports_nothing_until_a_name_is_used() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pragma_core.pluginkit\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('pragma_core.'))\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.strip() == "pragma_core.pluginkit"


@pytest.mark.parametrize("module", ["pragma_core.settings", "pragma_core.paths"])
def test_the_plugin_kit_exports_every_public_name_of_its_helper_modules(module: str) -> None:
    helper = importlib.import_module(module)
    exported = {name for name, (where, _attribute) in pluginkit._EXPORTS.items() if where == module}
    missing = set(helper.__all__) - exported
    assert not missing, f"{module} publishes {sorted(missing)}, which plugins cannot import from pragma_core.pluginkit"
