"""Shared fixtures: a site on the fake driver with a local repository, and a CLI runner."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from pragma_core.testing.contract import make_cluster, make_site

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 test@pragma"


@attrs.define
class Result:
    code: int
    out: str
    err: str


@attrs.define
class Site:
    root: Path
    etc: Path
    repo: Path
    key: Path

    def run(self, *args: str) -> Result:
        """Run ``pragma --conf ETC ARGS`` in-process."""
        from pragma_core import cli

        cli._plugin_cache = None
        out, err = io.StringIO(), io.StringIO()
        code = cli.run(["--conf", str(self.etc), *args], out=out, err=err)
        return Result(code, out.getvalue(), err.getvalue())

    def subprocess(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """Run the real ``pragma`` program in a child process."""
        proc = subprocess.run(
            [sys.executable, "-m", "pragma_core.cli", "--conf", str(self.etc), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=120,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)


def build_site(root: Path, *, names: tuple[str, ...] = ("demo",), extra: str = "", fake_conf: str = "") -> Site:
    etc = make_site(root, extra=extra)
    repo = root / "repo"
    lines = []
    for name in names:
        make_cluster(repo / name, name=name)
        lines.append(f"{name},{name}/{name}.xml")
    (repo / "vcdb.txt").write_text("# demo catalogue\n\n" + "\n".join(lines) + "\n")
    (etc / "fake.conf").write_text(f'state_file = "{root / "state" / "fake.json"}"\n' + fake_conf)
    key = root / "id_test.pub"
    key.write_text(KEY + "\n")
    return Site(root=root, etc=etc, repo=repo, key=key)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return build_site(tmp_path, names=("demo", "alpha", "zeta"))
