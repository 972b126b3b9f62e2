"""Real installed distributions for plugin tests: a ``*.dist-info`` (METADATA, entry_points.txt) and modules in a directory."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path


def make_distribution(path: Path, name: str, version: str, *, requires: str = "pragma-core>=0.1,<0.2",
                      entry_points: str, modules: dict[str, str]) -> Path:
    """Install a tiny distribution (dist-info + modules) into the directory ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    info = path / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Dist: {requires}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for module, source in modules.items():
        (path / f"{module}.py").write_text(textwrap.dedent(source))
    return path


class Installed:
    """Distributions installed for this process only: a directory first on ``sys.path``, forgotten afterwards."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.modules: set[str] = set()

    def add(self, name: str, version: str, *, entry_points: str, modules: dict[str, str] | None = None,
            requires: str = "pragma-core>=0.1,<0.2", under: str = "") -> None:
        """Install distribution ``name`` (into the sub-directory ``under``, which must be on sys.path)."""
        modules = modules or {}
        make_distribution(self.path / under if under else self.path, name, version, requires=requires,
                          entry_points=entry_points, modules=modules)
        self.modules.update(modules)
        from pragma_core import plugins

        plugins.rescan()

    def forget(self) -> None:
        """Unload the modules these distributions brought and forget the scan."""
        for module in self.modules:
            sys.modules.pop(module, None)
        from pragma_core import plugins

        plugins.rescan()
