"""pragma-audit records every stage of a real ``pragma boot`` as one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pragma_core.testing import make_cluster, make_site

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 test@pragma"


def pragma(etc: Path, audit: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PRAGMA_AUDIT_FILE": str(audit), "PRAGMA_PLUGINS_STRICT": "1"}
    return subprocess.run([sys.executable, "-m", "pragma_core.cli", "--conf", str(etc), *args],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    etc = make_site(tmp_path)
    make_cluster(tmp_path / "repo" / "demo", name="demo")
    (tmp_path / "repo" / "vcdb.txt").write_text("demo,demo/demo.xml\n")
    (etc / "fake.conf").write_text(f'state_file = "{tmp_path / "fake.json"}"\n')
    (tmp_path / "key.pub").write_text(KEY + "\n")
    return etc


def test_a_boot_leaves_one_line_per_stage_event(etc: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    result = pragma(etc, audit, "boot", "demo", "2", f"key={tmp_path / 'key.pub'}")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["stage"], r["status"]) for r in records] == [
        (s, st) for s in ("resolve", "stage", "allocate", "render", "deploy") for st in ("start", "done")
    ]
    assert all(r["cluster"] == "demo" and r["user"] for r in records)


def test_a_failed_boot_records_the_failure_and_the_rollback(etc: Path, tmp_path: Path) -> None:
    (etc / "fake.conf").write_text(f'state_file = "{tmp_path / "fake.json"}"\nfail_deploy = True\n')
    audit = tmp_path / "audit.jsonl"
    result = pragma(etc, audit, "boot", "demo", "2", f"key={tmp_path / 'key.pub'}")
    assert result.returncode == 1
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    failed = [r for r in records if r["status"] == "failed"]
    assert [r["stage"] for r in failed] == ["deploy"]
    assert "fail_deploy" in failed[0]["error"]
    assert records[-1]["stage"] == "rollback" and records[-1]["status"] == "done"


def test_audit_show_prints_the_last_lines(etc: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    pragma(etc, audit, "boot", "demo", "1", f"key={tmp_path / 'key.pub'}")
    result = pragma(etc, audit, "audit", "show", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["stage"] == "deploy"
