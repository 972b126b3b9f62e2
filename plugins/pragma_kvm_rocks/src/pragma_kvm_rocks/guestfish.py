"""vc-out injection through libguestfs: one appliance for every disk of a cluster.

Used when the e2fsprogs fast path (:mod:`pragma_kvm_rocks.e2fs`) does not
apply: a qcow2 base image, or a root filesystem that is not ext2/3/4 on a
partition. libguestfs' Python binding is not on PyPI, so this drives the
``guestfish`` command: ``guestfish --listen`` starts **one** appliance with
every node disk attached (``--rw -a disk1 -a disk2 ...``), then each edit is
a ``guestfish --remote`` call (argument lists, no shell). On these machines
libguestfs works only with ``LIBGUESTFS_BACKEND=direct`` and TCG, which is
what :data:`ENVIRONMENT` sets; launching the appliance takes about 11 s, so
launching it once instead of once per node is what matters.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from attrs import frozen

from pragma_core.errors import DriverError

from .e2fs import LEGACY_NETWORK_FILES, VCOUT_PATH

log = logging.getLogger(__name__)

#: Environment for libguestfs on machines where KVM aborts its appliance.
ENVIRONMENT = {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
_PID = re.compile(r"GUESTFISH_PID=(\d+)")


def available() -> bool:
    """Whether the ``guestfish`` command is installed."""
    return shutil.which("guestfish") is not None


@frozen(kw_only=True)
class GuestDisk:
    """One node disk to edit: its path, format, and the vc-out bytes it receives."""

    path: Path
    format: str
    vcout: bytes


class GuestfishSession:
    """A running ``guestfish --listen`` with disks attached; use as a context manager."""

    def __init__(self, disks: Sequence[GuestDisk], *, program: str = "guestfish") -> None:
        self.disks = list(disks)
        self.program = program
        self.env = {**os.environ, **ENVIRONMENT}
        self.pid: str | None = None

    def __enter__(self) -> GuestfishSession:
        argv = [self.program, "--listen", "--rw"]
        for disk in self.disks:
            argv += [f"--format={disk.format}", "-a", str(disk.path)]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, check=False)
        match = _PID.search(proc.stdout)
        if proc.returncode != 0 or not match:
            raise DriverError(f"guestfish could not start: {proc.stderr.strip() or proc.stdout.strip()}")
        self.pid = match.group(1)
        try:
            self.call("run")
        except BaseException:
            self._exit()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit()

    def _exit(self) -> None:
        if self.pid is not None:
            try:
                self.call("exit")
            except DriverError as err:
                log.warning("guestfish did not exit cleanly: %s", err)
            self.pid = None

    def call(self, *words: str) -> str:
        """Run one guestfish command in the session; its standard output."""
        argv = [self.program, f"--remote={self.pid}", "--", *words]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, check=False)
        if proc.returncode != 0:
            raise DriverError(f"guestfish {words[0]} failed: {proc.stderr.strip()}")
        return proc.stdout

    def root_device(self, index: int) -> str:
        """The filesystem to mount as ``/`` on disk ``index``: its first ext/xfs/btrfs partition."""
        device = self.call("list-devices").split()[index]
        partitions = [p for p in self.call("list-partitions").split() if p.startswith(device)]
        for candidate in partitions or [device]:
            kind = self.call("vfs-type", candidate).strip()
            if kind in ("ext2", "ext3", "ext4", "xfs", "btrfs"):
                return candidate
        raise DriverError(f"{self.disks[index].path}: no Linux root filesystem found")

    def inject_all(self, patterns: Sequence[str] = LEGACY_NETWORK_FILES) -> None:
        """Make the guest edits (rename legacy network files, write vc-out) on every disk."""
        with tempfile.TemporaryDirectory(prefix="pragma-guestfish-") as tmp:
            for index, disk in enumerate(self.disks):
                self.call("mount", self.root_device(index), "/")
                try:
                    for pattern in patterns:
                        for path in self.call("glob-expand", pattern).split():
                            name = PurePosixPath(path)
                            if name.name.startswith("old-"):
                                continue
                            self.call("mv", path, str(name.with_name(f"old-{name.name}")))
                    source = Path(tmp) / f"vc-out-{index}.xml"
                    source.write_bytes(disk.vcout)
                    self.call("mkdir-p", str(PurePosixPath(VCOUT_PATH).parent))
                    self.call("upload", str(source), VCOUT_PATH)
                    self.call("chmod", "0644", VCOUT_PATH)
                finally:
                    self.call("umount-all")
            self.call("sync")


def inject(disks: Sequence[GuestDisk]) -> None:
    """Inject vc-out into every disk with one appliance launch."""
    if not disks:
        return
    if not available():
        raise DriverError(
            "vc-out injection needs libguestfs for these images (qcow2 base or no ext root partition):"
            " install libguestfs-tools, or use raw images with an ext2/3/4 root partition"
        )
    with GuestfishSession(disks) as session:
        session.inject_all()
