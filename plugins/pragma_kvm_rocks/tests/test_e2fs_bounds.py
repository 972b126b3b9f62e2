"""e2fsprogs and libguestfs on a crafted base image cannot hold a boot for ever or fill the head's memory.

The base image comes from the repository. A crafted filesystem that sent
debugfs into an endless loop, or a directory of a million entries that it
lists, would stop a boot (as root) with no end; every e2fsprogs and sfdisk
run goes through core's bounded runner: a deadline (``TOOL_SECONDS``) and a
cap on what it prints; so does every guestfish command, and a guestfish
server that will not exit is killed with its appliance. Here a ``debugfs``
standing in for that loop is first on ``PATH`` (sfdisk and the disk are
real), and a ``guestfish`` whose server hangs stands in for a stuck appliance.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from pragma_core import DriverError
from pragma_core.pluginkit import process_alive
from pragma_kvm_rocks import e2fs

from conftest import make_ext4_disk


def _debugfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "debugfs"
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_a_debugfs_that_never_ends_on_a_base_fails_the_boot_by_its_deadline(tmp_path: Path, monkeypatch) -> None:
    disk = make_ext4_disk(tmp_path / "base.img")
    _debugfs(tmp_path, monkeypatch, "exec sleep 600")
    monkeypatch.setattr(e2fs, "TOOL_SECONDS", 1.0)
    started = time.monotonic()
    with pytest.raises(DriverError) as info:
        e2fs.find_root_filesystem(disk)
    assert str(info.value) == f"debugfs on {disk}: not done within 1 s; stopped"
    assert time.monotonic() - started < 15


def test_a_debugfs_listing_without_end_is_stopped_at_the_output_cap(tmp_path: Path, monkeypatch) -> None:
    disk = make_ext4_disk(tmp_path / "base.img")
    _debugfs(tmp_path, monkeypatch, "exec yes '/12/100644/0/0/ifcfg-eth0-a-very-long-name/1/'")
    with pytest.raises(DriverError) as info:
        e2fs.plan_edits(disk, e2fs.ExtLocation(offset=1 << 20, length=63 << 20))
    assert str(info.value) == f"debugfs on {disk}: printed more than {16 << 20} bytes; stopped"


def test_a_missing_debugfs_still_hands_over_to_libguestfs(tmp_path: Path, monkeypatch) -> None:
    disk = make_ext4_disk(tmp_path / "base.img")
    monkeypatch.setattr(e2fs.shutil, "which", lambda name: None if name == "debugfs" else "/usr/bin/" + name)
    with pytest.raises(e2fs.InjectionUnsupported, match="debugfs is not installed"):
        e2fs.plan_edits(disk, e2fs.ExtLocation(offset=1 << 20, length=63 << 20))


#: ``guestfish`` whose server hangs: ``--listen`` starts a server (with an "appliance" child) that ignores
#: ``exit``; every ``--remote`` call but ``exit`` never returns.
HUNG_GUESTFISH = """#!/usr/bin/env python3
import os, subprocess, sys, time
if "--listen" in sys.argv:
    if os.fork() == 0:
        appliance = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(os.environ["PIDS"], "w") as f:
            f.write(f"{os.getpid()} {appliance.pid}")
        time.sleep(600)
        sys.exit(0)
    while not os.path.exists(os.environ["PIDS"]):
        time.sleep(0.01)
    print("GUESTFISH_PID=" + open(os.environ["PIDS"]).read().split()[0], flush=True)
    sys.exit(0)
if sys.argv[-1] == "exit":
    sys.exit(0)
time.sleep(600)
"""


def test_a_hung_guestfish_command_fails_by_its_deadline_and_the_server_goes_with_its_appliance(
    tmp_path: Path, monkeypatch
) -> None:
    from pragma_kvm_rocks import guestfish

    pids = tmp_path / "pids"
    monkeypatch.setenv("PIDS", str(pids))
    program = tmp_path / "guestfish"
    program.write_text(HUNG_GUESTFISH)
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(guestfish, "CALL_SECONDS", 1.0)
    monkeypatch.setattr(guestfish, "EXIT_TIMEOUT", 1.0)
    disk = guestfish.GuestDisk(path=tmp_path / "node.qcow2", format="qcow2", vcout=b"<vc/>")
    started = time.monotonic()
    with pytest.raises(DriverError) as info, guestfish.GuestfishSession([disk], program=str(program)):
        pass
    assert "guestfish run: not done within 1 s; stopped" in str(info.value)
    server, appliance = (int(p) for p in pids.read_text().split())
    until = time.monotonic() + 5
    while any(process_alive(p) for p in (server, appliance)) and time.monotonic() < until:
        time.sleep(0.05)
    assert not process_alive(server) and not process_alive(appliance), "the server and its appliance are stopped"
    assert time.monotonic() - started < 20
