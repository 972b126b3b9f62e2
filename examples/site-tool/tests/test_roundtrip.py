"""The example tool boots, waits, lists and cleans a cluster through pragma_core.Site (fake driver)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pragma_core.testing.contract import make_cluster, make_site

TOOL = Path(__file__).resolve().parents[1] / "pragma_roundtrip.py"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 test@pragma"


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    etc = make_site(tmp_path)
    make_cluster(tmp_path / "repo" / "demo", name="demo")
    (tmp_path / "repo" / "vcdb.txt").write_text("demo,demo/demo.xml\n")
    (etc / "fake.conf").write_text(f'state_file = "{tmp_path / "state.json"}"\n')
    (tmp_path / "id.pub").write_text(KEY + "\n")
    return etc


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120)


def test_tool_boots_waits_lists_and_removes_the_cluster(conf: Path) -> None:
    done = run("demo", "8", "--conf", str(conf), "--key", str(conf.parent / "id.pub"), "--wait", "5")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("booted ") and "2 compute node(s)" in lines[0]
    assert sum(line.endswith(": ready") for line in lines) == 3
    assert lines[-1].startswith("removed ")
    state = json.loads((conf.parent / "state.json").read_text())
    assert state["clusters"] == {}


def test_tool_keeps_the_cluster_when_asked(conf: Path) -> None:
    done = run("demo", "0", "--conf", str(conf), "--key", str(conf.parent / "id.pub"), "--keep")
    assert done.returncode == 0, done.stderr
    state = json.loads((conf.parent / "state.json").read_text())
    assert len(state["clusters"]) == 1


def test_tool_reports_a_library_error_in_one_line(conf: Path) -> None:
    done = run("no-such-image", "2", "--conf", str(conf), "--key", str(conf.parent / "id.pub"))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("Error: ") and "no-such-image" in done.stderr
