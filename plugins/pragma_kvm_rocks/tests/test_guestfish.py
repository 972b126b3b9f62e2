"""vc-out injection through libguestfs (``guestfish --listen``), one appliance for every node disk.

Each appliance launch costs about 10 s under TCG, so this file launches two:
one build shared by the success tests (module fixture), one failing build.
``guestfish`` is reached through a logging wrapper first on ``PATH``, which is
how the tests count appliance launches. Results are read back without an
appliance: ``qemu-img convert`` to raw, then ``debugfs rdump`` (ext4) or
``btrfs restore`` (btrfs).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    GUEST_FILES,
    PART_OFFSET,
    make_ext4_disk,
    make_partitioned_disk,
    need,
    to_qcow2,
    to_raw,
)
from pragma_kvm_rocks.disks import DiskBuilder, DiskJob

from pragma_core.errors import DriverError

PART_SIZE = 128 << 20
BOOT_FILES = {"vmlinuz": b"kernel\n", "grub/grub.cfg": b"linux /vmlinuz\n"}
RENAMED = {
    "etc/sysconfig/network-scripts/old-ifcfg-eth0": GUEST_FILES["etc/sysconfig/network-scripts/ifcfg-eth0"],
    "etc/sysconfig/network-scripts/old-ifcfg-eth1": GUEST_FILES["etc/sysconfig/network-scripts/ifcfg-eth1"],
    "etc/udev/rules.d/old-70-persistent-net.rules": GUEST_FILES["etc/udev/rules.d/70-persistent-net.rules"],
}


def _need_guestfish() -> str:
    need("qemu-img", "debugfs", "btrfs", "mkfs.btrfs")
    real = shutil.which("guestfish")
    if real is None:
        pytest.skip("needs guestfish (Debian guestfish + a kernel in /boot, see scripts/setup)")
    return real


def _wrapper(directory: Path, real: str) -> Path:
    """A ``guestfish`` that logs each argument list (one line) to ``calls.log``, then runs the real one."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "calls.log"
    script = directory / "guestfish"
    script.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$*\" >> {shlex.quote(str(log))}\n"
        f"exec {shlex.quote(real)} \"$@\"\n"
    )
    script.chmod(0o755)
    return log


def _launches(log: Path) -> tuple[list[str], list[str]]:
    """The ``--listen`` invocations and the remote ``run`` commands (appliance launches) logged."""
    lines = log.read_text().splitlines() if log.exists() else []
    listens = [line for line in lines if line.startswith("--listen")]
    runs = [line for line in lines if line.startswith("--remote=") and line.endswith("-- run")]
    return listens, runs


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(tree: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file()}


def _ext4_files(raw: Path, offset: int, out: Path) -> dict[str, bytes]:
    """Every file under /etc and /root of the ext4 filesystem at ``offset`` in ``raw``."""
    out.mkdir()
    device = f"{raw}?offset={offset}"
    for top in ("/etc", "/root"):
        subprocess.run(["debugfs", "-R", f"rdump {top} {out}", device], check=True, capture_output=True)
    return _files(out)


def _btrfs_files(raw: Path, offset: int, out: Path) -> dict[str, bytes]:
    """Every file of the btrfs filesystem in the ``PART_SIZE`` partition at ``offset`` in ``raw``."""
    part = out.with_suffix(".part")
    with open(raw, "rb") as src, open(part, "wb") as dst:
        src.seek(offset)
        dst.write(src.read(PART_SIZE))
    out.mkdir()
    subprocess.run(["btrfs", "restore", str(part), str(out)], check=True, capture_output=True)
    part.unlink()
    return _files(out)


class Built:
    """One guestfish build over two bases, shared by the tests that check its results."""

    def __init__(self, root: Path, real: str) -> None:
        self.root = root
        # Base A: qcow2, ext4 root on partition 1. Base B: raw, ext4 /boot on
        # partition 1 (no /etc: must be skipped), btrfs root on partition 2.
        self.qcow2_base = to_qcow2(make_ext4_disk(root / "a.img", size=64 << 20), root / "a.qcow2")
        (root / "a.img").unlink()
        self.raw_base = make_partitioned_disk(root / "b.img", [("ext4", BOOT_FILES), ("btrfs", GUEST_FILES)],
                                              part_size=PART_SIZE)
        self.base_sums = {base: _sha256(base) for base in (self.qcow2_base, self.raw_base)}
        self.jobs = [
            DiskJob(node=f"a{i}", base=self.qcow2_base, base_format="qcow2", target=root / "disks" / f"a{i}.qcow2",
                    vcout=b"<vc-out node='a%d'/>\n" % i)
            for i in range(3)
        ] + [
            DiskJob(node=f"b{i}", base=self.raw_base, base_format="raw", target=root / "disks" / f"b{i}.qcow2",
                    vcout=b"<vc-out node='b%d'/>\n" % i)
            for i in range(2)
        ]
        self.log = _wrapper(root / "bin", real)
        self._trees: dict[str, dict[str, bytes]] = {}
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PATH", f"{root / 'bin'}:{os.environ['PATH']}")
            DiskBuilder(mode="overlay", injection="guestfish").build(self.jobs)

    def guest_files(self, job: DiskJob) -> dict[str, bytes]:
        """The root filesystem's files as the node will see them (read back once per disk)."""
        if job.node not in self._trees:
            self._trees[job.node] = self._read_back(job)
        return self._trees[job.node]

    def _read_back(self, job: DiskJob) -> dict[str, bytes]:
        raw = to_raw(job.target, self.root / f"{job.node}.raw")
        try:
            if job.base == self.qcow2_base:
                return _ext4_files(raw, PART_OFFSET, self.root / f"{job.node}-tree")
            return _btrfs_files(raw, PART_OFFSET + PART_SIZE, self.root / f"{job.node}-tree")
        finally:
            raw.unlink()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    real = _need_guestfish()
    yield Built(tmp_path_factory.mktemp("guestfish"), real)


def test_every_node_disk_holds_its_own_vcout(built: Built) -> None:
    for job in built.jobs:
        assert built.guest_files(job)["root/vc-out.xml"] == job.vcout, job.node


def test_legacy_network_files_are_moved_to_old_names_and_others_kept(built: Built) -> None:
    for job in built.jobs:
        files = built.guest_files(job)
        for name, data in RENAMED.items():
            assert files.get(name) == data, (job.node, name)
        assert "etc/sysconfig/network-scripts/ifcfg-eth0" not in files
        assert "etc/udev/rules.d/70-persistent-net.rules" not in files
        assert files["etc/sysconfig/network-scripts/ifcfg-lo"] == GUEST_FILES["etc/sysconfig/network-scripts/ifcfg-lo"]
        assert files["etc/hostname"] == GUEST_FILES["etc/hostname"]


def test_base_images_and_a_boot_partition_without_etc_are_left_untouched(built: Built) -> None:
    for base, digest in built.base_sums.items():
        assert _sha256(base) == digest, base
    job = next(j for j in built.jobs if j.base == built.raw_base)
    raw = to_raw(job.target, built.root / "boot-check.raw")
    listing = subprocess.run(["debugfs", "-R", "ls -p /", f"{raw}?offset={PART_OFFSET}"],
                             check=True, capture_output=True, text=True).stdout
    raw.unlink()
    names = {field.split("/")[5] for field in listing.splitlines() if field.count("/") >= 6}
    assert names == {".", "..", "lost+found", "vmlinuz", "grub"}


def test_all_disks_of_every_base_share_one_appliance_launch(built: Built) -> None:
    listens, runs = _launches(built.log)
    assert len(listens) == 1 and len(runs) == 1, (listens, runs)
    for job in built.jobs:
        assert f"-a {job.target}" in listens[0]


def test_a_disk_without_linux_root_fails_the_build_once_and_removes_every_disk(tmp_path: Path) -> None:
    real = _need_guestfish()
    good = to_qcow2(make_ext4_disk(tmp_path / "good.img", size=64 << 20), tmp_path / "good.qcow2")
    empty = to_qcow2(make_partitioned_disk(tmp_path / "empty.img", [(None, {})], part_size=16 << 20),
                     tmp_path / "empty.qcow2")
    disks = tmp_path / "disks"
    jobs = [DiskJob(node=f"g{i}", base=good, base_format="qcow2", target=disks / f"g{i}.qcow2", vcout=b"<g/>")
            for i in range(2)]
    jobs.append(DiskJob(node="bad", base=empty, base_format="qcow2", target=disks / "bad.qcow2", vcout=b"<b/>"))
    log = _wrapper(tmp_path / "bin", real)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
        # "auto" with qcow2 bases must choose guestfish; "copy" makes standalone qcow2 copies.
        with pytest.raises(DriverError, match=r"bad\.qcow2: no Linux root filesystem found"):
            DiskBuilder(mode="copy", injection="auto").build(jobs)
    assert list(disks.iterdir()) == []
    listens, runs = _launches(log)
    assert len(listens) == 1 and len(runs) == 1
    assert _running_servers(tmp_path) == 0


def _running_servers(under: Path) -> int:
    """How many live ``guestfish --listen`` processes have a disk argument under ``under``."""
    count = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X") and b"--listen" in argv and any(a.startswith(bytes(under)) for a in argv):
            count += 1
    return count
