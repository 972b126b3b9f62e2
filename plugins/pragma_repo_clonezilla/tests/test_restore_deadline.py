"""A restore ends by its deadline (``restore_timeout``), whatever the image or the NAS does.

A hostile image can make partclone spin, cziso can wait for ever on its VM,
and a NAS can stop reading what ssh sends it. Each is stopped at the
deadline together with what it started (its whole process group), the
error names the setting, and nothing half-made is left: no partial disk,
no partclone log, no staging volume.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from czbuild import bz2_bomb, make_clonezilla_image, make_iso
from pragma_core.pluginkit import Deadline, process_alive
from pragma_repo_clonezilla.restore import restore_iso_to_raw
from pragma_repo_clonezilla.target import Target, cziso_restore, deliver
from pragma_repo_clonezilla.tools import ToolError

MIB = 1 << 20

#: A tool that starts a child, writes both process ids to $PIDS, and then neither reads nor ends.
NEVER_ENDS = """#!/usr/bin/env python3
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.environ["PIDS"], "a") as f:
    f.write(f"{os.getpid()} {child.pid}\\n")
time.sleep(600)
"""


def _tool(bin_dir: Path, name: str, text: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _all_stopped(pids_file: Path) -> list[int]:
    pids = [int(p) for line in pids_file.read_text().splitlines() for p in line.split()]
    assert pids, "the tool ran"
    deadline = time.monotonic() + 5
    while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if process_alive(p)]


@pytest.fixture
def hanging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A bin directory first on PATH, and the file where never-ending tools write their process ids."""
    bin_dir, pids = tmp_path / "bin", tmp_path / "pids"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("PIDS", str(pids))
    return bin_dir, pids


def test_a_partclone_that_never_ends_is_stopped_at_the_deadline_with_its_children_and_leaves_nothing(
    isos, hanging, tmp_path: Path
) -> None:
    bin_dir, pids = hanging
    _tool(bin_dir, "partclone.ext4", NEVER_ENDS)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    started = time.monotonic()
    with pytest.raises(ToolError) as info:
        restore_iso_to_raw(isos["frontend"], out_dir / "disk.raw", log_dir=out_dir, deadline=Deadline(1.5))
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert message.startswith(isos["frontend"].name) and "partclone.ext4" in message, message
    assert message.endswith("not done within restore_timeout (1.5 s); stopped")
    assert _all_stopped(pids) == [], "the tool and the child it started are killed"
    assert list(out_dir.iterdir()) == [], "no partial disk, no partclone log"


def test_a_cziso_that_never_returns_is_stopped_at_the_deadline_with_what_it_started(hanging, tmp_path: Path) -> None:
    bin_dir, pids = hanging
    cziso = _tool(bin_dir, "cziso", NEVER_ENDS)
    iso = tmp_path / "demo-frontend.iso"
    iso.write_bytes(b"read by cziso only")
    target = Target(url=f"file://{tmp_path}/demo.raw", kind="file", path=tmp_path / "demo.raw")
    with pytest.raises(ToolError) as info:
        cziso_restore(cziso, iso, target, size_setting=None, log_file=tmp_path / "restore.log", deadline=Deadline(1.5))
    assert str(info.value) == "cziso restore demo-frontend.iso: not done within restore_timeout (1.5 s); stopped"
    assert _all_stopped(pids) == []
    assert not (tmp_path / "demo.raw").exists()


#: ``ssh`` to a NAS whose ``dd`` never reads (a hung NAS); every other command answers; each call is logged.
STALLED_NAS = """#!/usr/bin/env python3
import json, os, subprocess, sys, time
with open(os.environ["SSH_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if "dd" in sys.argv:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["PIDS"], "a") as f:
        f.write(f"{os.getpid()} {child.pid}\\n")
    time.sleep(600)
if sys.argv[-2:] == ["available", "tank"]:
    print(50 << 30)
    sys.exit(0)
sys.exit(1 if "get" in sys.argv else 0)
"""


def test_a_nas_that_stops_reading_stops_the_restore_and_its_staging_volume_is_destroyed(
    isos, hanging, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, pids = hanging
    ssh_log = tmp_path / "ssh.log"
    monkeypatch.setenv("SSH_LOG", str(ssh_log))
    _tool(bin_dir, "ssh", STALLED_NAS)
    work = tmp_path / "work"
    work.mkdir()
    target = Target(url="zfs://nas-0-0/tank/vc-demo", kind="zfs", host="nas-0-0", pool="tank", volume="vc-demo")
    with pytest.raises(ToolError) as info:
        deliver(isos["frontend"], target, size_setting=None, work_dir=work, deadline=Deadline(8))
    assert str(info.value) == "ssh nas-0-0 dd of=/dev/zvol/tank/vc-demo-pragma-new: not done within restore_timeout (8 s); stopped"
    remote = [argv[argv.index("--") + 1 :] for argv in map(json.loads, ssh_log.read_text().splitlines())]
    dd = next(i for i, argv in enumerate(remote) if argv[0] == "dd")
    assert ["zfs", "destroy", "-r", "tank/vc-demo-pragma-new"] in remote[dd + 1 :], "the half-written volume is destroyed"
    assert ["zfs", "rename", "tank/vc-demo-pragma-new", "tank/vc-demo"] not in remote
    assert _all_stopped(pids) == []
    assert list(work.iterdir()) == [], "the raw scratch disk is removed"


class _ExpiresAfter(Deadline):
    """A deadline that passes after its first ``checks`` looks (a restore too slow, without the wait)."""

    def __init__(self, checks: int) -> None:
        super().__init__(3600)
        self.checks = checks

    def remaining(self) -> float:
        self.checks -= 1
        return 3600.0 if self.checks >= 0 else -1.0


def test_a_restore_decompressing_in_process_stops_between_chunks_once_its_deadline_passes(tmp_path: Path) -> None:
    image = make_clonezilla_image(tmp_path, "slow", [{"size_mib": 32, "stored": bz2_bomb(32 * MIB), "compression": "bz2"}])
    iso = make_iso(image, tmp_path / "slow-frontend.iso", image_name="slow")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ToolError) as info:
        restore_iso_to_raw(iso, out / "disk.raw", log_dir=out, deadline=_ExpiresAfter(3))
    assert str(info.value) == "slow-frontend.iso: not done within restore_timeout (3600 s); stopped"
    assert list(out.iterdir()) == []
